"""Coverage from the `media_counts` counters equals a count over the table after every kind of
write (registration, each kind's batch, failures, clip compile, deletes), and the pending
predicates are the partial indexes' (`api.models.TODO_WHERE`, copied in migration 0003)."""

from __future__ import annotations

import pytest
from sqlalchemy import insert, text
from sqlmodel import Session

from api.models import MEDIA, TODO_WHERE, uri_key, utcnow
from api.schemas import (
    BackfillKind,
    BatchRequest,
    ClipCompileBatch,
    ClipCompileResult,
    Coverage,
    DurationBatch,
    DurationResult,
    FailureItem,
    HashAlgorithm,
    HashBatch,
    HashResult,
    MediaIn,
    PendingFilter,
    SnrFrequencyBatch,
    SnrFrequencyResult,
    Version0Batch,
    Version0Result,
)
from api.services.batches import apply_durations, apply_hashes, apply_snr_frequency, apply_version0
from api.services.kinds import KINDS
from api.services.ledger import record_failures
from api.services.media import register_media
from api.services.projects import apply_clip_compile
from api.services.work import PendingRequest, coverage, fold_counts, pending_query, scan_coverage
from tests.helpers import load_migration
from tests.services.utils import add_project

MAX_ATTEMPTS = 2
LEASE = 3600.0


def scanned(session: Session) -> Coverage:
    """Coverage by scans; file-hashing per algorithm, listed as `coverage` lists them (sha256
    always, another algorithm once some record has its digest)."""
    kinds = []
    for kind in KINDS:
        if kind is not BackfillKind.FILE_HASHING:
            kinds.append(scan_coverage(session, kind, MAX_ATTEMPTS, LEASE))
            continue
        for algorithm in (HashAlgorithm.SHA256, *(a for a in HashAlgorithm if a != "sha256")):
            found = scan_coverage(session, kind, MAX_ATTEMPTS, LEASE, algorithm)
            if algorithm is HashAlgorithm.SHA256 or found.done:
                kinds.append(found)
    return Coverage(kinds=kinds)


def check(session: Session) -> dict[str, tuple[int, ...]]:
    """Counters == scan; returns the figures (total, done, pending, failed, quarantined)."""
    session.commit()
    by_counters = coverage(session=session, max_attempts=MAX_ATTEMPTS, lease_seconds=LEASE)
    by_scan = scanned(session)
    session.commit()
    assert by_counters == by_scan
    return {
        k.kind.value + (f"/{k.algorithm}" if k.algorithm else ""): (
            k.total,
            k.done,
            k.pending,
            k.failed,
            k.quarantined,
        )
        for k in by_counters.kinds
    }


def register(session: Session, *items: MediaIn, dry_run: bool = False) -> list[int]:
    result = register_media(session=session, batch=BatchRequest(items=list(items), dry_run=dry_run))
    session.commit()
    return [i.id for i in result.items if i.id is not None]


def test_counts_follow_every_kind_of_write(session: Session) -> None:
    assert check(session)["media-duration"] == (0, 0, 0, 0, 0)

    ids = register(session, *(MediaIn(uri=f"c/{i}.wav", media_type="audio") for i in range(6)))
    legacy = register(session, *(MediaIn(uri=f"/old/{i}.wav", schema_version=0) for i in range(3)))
    register(session, MediaIn(uri="c/0.wav", media_type="audio"))  # known: nothing new
    register(session, MediaIn(uri="dry.wav", media_type="audio"), dry_run=True)
    assert check(session)["media-duration"] == (6, 0, 6, 0, 0)
    assert check(session)["version-0"] == (9, 6, 3, 0, 0)

    apply_durations(
        session=session,
        batch=DurationBatch(items=[DurationResult(record_id=r, duration=1.5) for r in ids[:3]]),
    )
    apply_durations(  # the same values again: unchanged
        session=session,
        batch=DurationBatch(items=[DurationResult(record_id=ids[0], duration=1.5)]),
    )
    assert check(session)["media-duration"] == (6, 3, 3, 0, 0)

    sha, md5 = "ab" * 32, "cd" * 16
    apply_hashes(
        session=session,
        batch=HashBatch(
            items=[
                HashResult(record_id=ids[0], hash=sha, algorithm=HashAlgorithm.SHA256),
                HashResult(record_id=ids[1], hash=md5, algorithm=HashAlgorithm.MD5),
            ]
        ),
    )
    figures = check(session)  # one digest per algorithm, each counted by itself
    assert (figures["file-hashing/sha256"], figures["file-hashing/md5"]) == ((6, 1, 5, 0, 0),) * 2
    assert "file-hashing/blake2b" not in figures  # no blake2b digest yet: not listed
    apply_hashes(  # sha256 beside md5, and md5 beside sha256: both kept
        session=session,
        batch=HashBatch(
            items=[
                HashResult(record_id=ids[1], hash=sha, algorithm=HashAlgorithm.SHA256),
                HashResult(record_id=ids[0], hash=md5, algorithm=HashAlgorithm.MD5),
            ]
        ),
    )
    figures = check(session)
    assert (figures["file-hashing/sha256"], figures["file-hashing/md5"]) == ((6, 2, 4, 0, 0),) * 2

    apply_snr_frequency(
        session=session,
        batch=SnrFrequencyBatch(
            items=[SnrFrequencyResult(record_id=r, snr=10.0, frequency=440.0) for r in ids[:2]]
        ),
    )
    assert check(session)["snr-frequency"] == (6, 2, 4, 0, 0)

    failures = BatchRequest[FailureItem](
        items=[FailureItem(record_id=r, error="unreadable") for r in (ids[4], ids[5], ids[0])]
    )
    for _ in range(MAX_ATTEMPTS):
        record_failures(
            session=session,
            kind=BackfillKind.MEDIA_DURATION,
            batch=failures,
            refuse=KINDS[BackfillKind.MEDIA_DURATION].refuse,
        )
    # ids[0] is done: its failure counts neither as failed nor quarantined.
    assert check(session)["media-duration"] == (6, 3, 1, 2, 2)

    apply_version0(
        session=session,
        batch=Version0Batch(
            items=[
                Version0Result(
                    record_id=legacy[0],
                    expected_revision=1,
                    uri="up/0.wav",
                    media_type="audio",
                    size_bytes=10,
                ),
                Version0Result(  # a uri taken: refused, counts unchanged for it
                    record_id=legacy[1],
                    expected_revision=1,
                    uri="c/1.wav",
                    media_type="audio",
                    size_bytes=10,
                ),
            ]
        ),
    )
    figures = check(session)
    assert figures["version-0"] == (9, 7, 2, 1, 0)
    assert figures["media-duration"] == (7, 3, 2, 2, 2)  # the upgraded record has no duration

    pid = add_project(session)
    apply_clip_compile(
        session=session,
        batch=ClipCompileBatch(
            items=[
                ClipCompileResult(
                    project_id=pid,
                    output_uri="out/p.mp4",
                    thumbnail_uri="out/p.jpg",
                    duration=2.0,
                    hash="ef" * 32,
                    size_bytes=100,
                    render_seconds=2.0,
                )
            ]
        ),
    )
    figures = check(session)  # the clip (no duration) and the output (with one) are records
    assert figures["media-duration"] == (9, 4, 3, 2, 2)
    assert figures["clip-compile"][:2] == (1, 1)

    session.execute(text("DELETE FROM media WHERE id = :id"), {"id": ids[5]})
    assert check(session)["media-duration"] == (8, 4, 3, 1, 1)


def test_folding_keeps_the_counts(session: Session) -> None:
    for start in range(0, 30, 10):
        register(
            session,
            *(MediaIn(uri=f"f/{i}.wav", media_type="audio") for i in range(start, start + 10)),
        )
    before = check(session)
    fold_counts(session)
    assert check(session) == before
    rows = session.execute(text("SELECT COUNT(*) FROM media_counts")).scalar_one()
    session.commit()
    assert rows == 1


def test_migration_copies_the_pending_predicates() -> None:
    migration = load_migration("0003_compute_versions_and_digests.py")
    assert {name.replace("-", "_") for name in TODO_WHERE} == set(migration.TODO)
    for name, predicate in TODO_WHERE.items():
        assert migration.todo(name.replace("-", "_")) == predicate


@pytest.mark.parametrize(
    ("kind", "algorithm"),
    [
        (BackfillKind.MEDIA_DURATION, None),
        (BackfillKind.FILE_HASHING, None),
        (BackfillKind.FILE_HASHING, HashAlgorithm.BLAKE2B),
        (BackfillKind.FILE_HASHING, HashAlgorithm.MD5),
        (BackfillKind.SNR_FREQUENCY, None),
        (BackfillKind.VERSION_0, None),
    ],
)
def test_a_page_of_pending_work_reads_the_partial_index(
    session: Session, kind: BackfillKind, algorithm: HashAlgorithm | None
) -> None:
    """2,000 records, 99 % done for every kind (and every hash algorithm): the planner reads
    the kind's partial index (file-hashing: the algorithm's)."""
    now = utcnow()
    done = {"duration": 1.0, "snr": 1.0, "frequency": 1.0}
    done |= {"sha256": "ab" * 32, "blake2b": "ab" * 64, "sha1": "ab" * 20, "md5": "ab" * 16}
    legacy = dict.fromkeys(done)
    session.execute(
        insert(MEDIA),
        [
            {
                "uri": f"p/{i}.wav",
                "uri_key": uri_key(f"p/{i}.wav"),
                "media_type": "audio",
                "schema_version": 0 if i % 100 == 7 else 1,
                "revision": 1,
                "created_at": now,
                "updated_at": now,
                **(legacy if i % 100 == 7 else done),
            }
            for i in range(2000)
        ],
    )
    session.commit()
    dialect = session.get_bind().dialect
    session.execute(text("ANALYZE"))
    stmt = pending_query(
        PendingRequest(
            kind=kind,
            after_id=0,
            limit=100,
            max_attempts=3,
            lease_seconds=LEASE,
            where=PendingFilter(algorithm=algorithm),
        )
    )
    sql = str(stmt.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
    explain = "EXPLAIN QUERY PLAN " if dialect.name == "sqlite" else "EXPLAIN "
    plan = " ".join(str(row) for row in session.execute(text(explain + sql)))
    session.commit()
    name = kind.value.replace("-", "_")
    if kind is BackfillKind.FILE_HASHING:
        name += f"_{algorithm or 'sha256'}"
    assert f"ix_media_todo_{name}" in plan, plan
    assert "SCAN media" not in plan and "Seq Scan on media" not in plan, plan
