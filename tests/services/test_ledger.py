"""The failure ledger: attempts, quarantine, and leaving it once done."""

from __future__ import annotations

from sqlmodel import Session

from api.schemas import (
    BackfillKind,
    FailureBatch,
    FailureItem,
    PendingFilter,
    Rejection,
    ReprocessMode,
)
from api.services.batches import apply_durations
from api.services.kinds import KINDS
from api.services.ledger import record_failures
from api.services.work import PendingRequest, failures_page, pending_page
from tests.services.test_batches import durations
from tests.services.utils import add_media, ledger

KIND = BackfillKind.MEDIA_DURATION


def fail(session: Session, *ids: int, error: str = "unreadable") -> list[Rejection]:
    batch = FailureBatch(items=[FailureItem(record_id=i, error=error) for i in ids])
    result = record_failures(session=session, kind=KIND, batch=batch, refuse=KINDS[KIND].refuse)
    session.commit()
    return result.rejected


def test_record_failures_counts_attempts(session: Session) -> None:
    a, b = add_media(session, 2)
    fail(session, a, b)
    fail(session, a, error="still unreadable")
    assert ledger(session, KIND) == {a: 2, b: 1}
    page = failures_page(session=session, kind=KIND, after_id=0, limit=10, max_attempts=3)
    assert [(r.record_id, r.attempts, r.last_error) for r in page.items] == [
        (a, 2, "still unreadable"),
        (b, 1, "unreadable"),
    ]


def test_record_failures_rejects_an_unknown_record(session: Session) -> None:
    assert fail(session, 424242) == [Rejection(record_id=424242, reason="record not found")]
    assert ledger(session, KIND) == {}


def test_quarantined_record_leaves_pending_until_asked_for(session: Session) -> None:
    quarantined, fine = add_media(session, 2)
    for _ in range(3):
        fail(session, quarantined)
    pages = {
        mode: pending_page(
            session,
            PendingRequest(
                kind=KIND,
                after_id=0,
                limit=10,
                max_attempts=3,
                lease_seconds=60,
                where=PendingFilter(mode=mode),
            ),
        )
        for mode in ReprocessMode
        if mode is not ReprocessMode.STALE
    }
    assert [i.record_id for i in pages[ReprocessMode.MISSING].items] == [fine]
    assert [(i.record_id, i.attempts) for i in pages[ReprocessMode.FAILED].items] == [
        (quarantined, 3)
    ]
    assert [i.record_id for i in pages[ReprocessMode.ALL].items] == [fine]


def test_applied_value_clears_the_ledger(session: Session) -> None:
    a, b = add_media(session, 2)
    fail(session, a, b)
    apply_durations(session=session, batch=durations((a, 1.0)))
    session.commit()
    assert ledger(session, KIND) == {b: 1}
