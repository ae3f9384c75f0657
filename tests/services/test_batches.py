"""Applying result batches of the media kinds, straight through the service functions."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlmodel import Session

from api.models import Audit
from api.schemas import (
    BackfillKind,
    BatchResult,
    DurationBatch,
    DurationResult,
    Rejection,
    SnrFrequencyBatch,
    SnrFrequencyResult,
    Version0Batch,
    Version0Result,
)
from api.services.batches import apply_durations, apply_snr_frequency, apply_version0, run_batch
from api.services.errors import IdempotencyConflict
from tests.services.utils import add_media, ledger, stored


def durations(*pairs: tuple[int, float], dry_run: bool = False) -> DurationBatch:
    return DurationBatch(
        items=[DurationResult(record_id=r, duration=d) for r, d in pairs], dry_run=dry_run
    )


def test_apply_durations_counts_and_stores(session: Session) -> None:
    new, same = add_media(session, 2)
    add_media(session, 1, prefix="done", duration=2.5)
    [done] = add_media(session, 1, prefix="again", duration=7.0, duration_version=1)
    batch = durations((new, 1.25), (done, 7.0), (999_999, 3.0))
    result = apply_durations(session=session, batch=batch)
    session.commit()
    assert result == BatchResult(
        applied=1,
        unchanged=1,
        rejected=[Rejection(record_id=999_999, reason="record not found")],
    )
    assert stored(session, new).duration == 1.25
    assert (stored(session, new).revision, stored(session, done).revision) == (2, 1)
    assert stored(session, same).duration is None


def test_apply_durations_dry_run_writes_nothing(session: Session) -> None:
    [rid] = add_media(session)
    result = apply_durations(session=session, batch=durations((rid, 4.0), dry_run=True))
    session.commit()
    assert (result.applied, result.dry_run) == (1, True)
    assert (stored(session, rid).duration, stored(session, rid).revision) == (None, 1)


def test_apply_durations_rejects_a_duplicate_record(session: Session) -> None:
    [rid] = add_media(session)
    result = apply_durations(session=session, batch=durations((rid, 1.0), (rid, 2.0)))
    session.commit()
    assert result.applied == 1
    assert result.rejected == [Rejection(record_id=rid, reason="duplicate record_id in this batch")]
    assert stored(session, rid).duration == 1.0


def test_apply_durations_rejects_a_legacy_record(session: Session) -> None:
    [rid] = add_media(session, schema_version=0)
    result = apply_durations(session=session, batch=durations((rid, 1.0)))
    assert [r.reason for r in result.rejected] == [
        "record is a legacy schema_version 0 record; run version-0 first"
    ]


def test_apply_snr_frequency_above_nyquist_goes_to_the_ledger(session: Session) -> None:
    [rid] = add_media(session, sample_rate=8000)
    batch = SnrFrequencyBatch(items=[SnrFrequencyResult(record_id=rid, snr=20.0, frequency=5000.0)])
    result = apply_snr_frequency(session=session, batch=batch)
    session.commit()
    assert result.rejected == [
        Rejection(
            record_id=rid,
            reason="frequency 5000 Hz is above the Nyquist limit 4000 Hz of this record",
        )
    ]
    assert ledger(session, BackfillKind.SNR_FREQUENCY) == {rid: 1}
    assert stored(session, rid).frequency is None


def test_apply_version0_refuses_a_stale_revision(session: Session) -> None:
    [rid] = add_media(session, schema_version=0, revision=3)
    item = Version0Result(
        record_id=rid, expected_revision=2, uri="new/a.wav", media_type="audio", size_bytes=9
    )
    result = apply_version0(session=session, batch=Version0Batch(items=[item]))
    session.commit()
    assert result.rejected == [
        Rejection(record_id=rid, reason="conflict: record is at revision 3, expected 2")
    ]
    assert (stored(session, rid).schema_version, stored(session, rid).uri) == (0, "s/000.wav")


def _run(session: Session, batch: DurationBatch, key: str) -> BatchResult:
    return run_batch(
        session=session,
        kind=BackfillKind.MEDIA_DURATION.value,
        body=batch,
        dry_run=batch.dry_run,
        apply=lambda: apply_durations(session=session, batch=batch),
        result_type=BatchResult,
        token_name="tester",
        idempotency_key=key,
        flow_run_id="run-1",
    )


def test_run_batch_replays_a_key_without_a_second_effect(session: Session) -> None:
    [rid] = add_media(session)
    first = _run(session, durations((rid, 1.5)), "key-1")
    replay = _run(session, durations((rid, 1.5)), "key-1")
    assert first == replay == BatchResult(applied=1)
    assert stored(session, rid).revision == 2
    assert session.scalar(select(func.count()).select_from(Audit)) == 1
    audit = session.scalars(select(Audit)).one()
    assert (audit.token_name, audit.kind, audit.flow_run_id) == (
        "tester",
        "media-duration",
        "run-1",
    )


def test_run_batch_refuses_a_key_reused_with_another_body(session: Session) -> None:
    [rid] = add_media(session)
    _run(session, durations((rid, 1.5)), "key-2")
    with pytest.raises(IdempotencyConflict, match="different request body"):
        _run(session, durations((rid, 2.5)), "key-2")
    session.rollback()
    assert stored(session, rid).duration == 1.5
