"""What is left to do: pending pages and coverage per kind."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Select, and_, func, null, or_, select, text
from sqlmodel import Session

from api.models import Media, MediaCounts
from api.schemas import (
    BackfillKind,
    Coverage,
    FailurePage,
    FailureRecord,
    HashAlgorithm,
    KindCoverage,
    MediaType,
    PendingItem,
    PendingPage,
)
from api.services.kinds import KINDS
from api.services.ledger import FAILURES

MEDIA = Media.__table__  # type: ignore[attr-defined]
COUNTS = MediaCounts.__table__  # type: ignore[attr-defined]


def pending_page(
    *,
    session: Session,
    kind: BackfillKind,
    after_id: int,
    limit: int,
    max_attempts: int,
    lease_seconds: float,
    media_type: MediaType | None = None,
    only_failed: bool = False,
    algorithm: HashAlgorithm | None = None,
    shard_index: int = 0,
    shard_count: int = 1,
) -> PendingPage:
    """One page of work, by id: quarantined records only when `only_failed`."""
    stmt = pending_query(
        kind=kind,
        after_id=after_id,
        limit=limit,
        max_attempts=max_attempts,
        lease_seconds=lease_seconds,
        media_type=media_type,
        only_failed=only_failed,
        algorithm=algorithm,
        shard_index=shard_index,
        shard_count=shard_count,
    )
    rows = session.execute(stmt).mappings().all()
    items = [PendingItem.model_validate({"record_id": r["id"], **r}) for r in rows[:limit]]
    return PendingPage(
        kind=kind,
        items=items,
        next_after_id=items[-1].record_id if len(rows) > limit else None,
    )


def pending_query(
    *,
    kind: BackfillKind,
    after_id: int,
    limit: int,
    max_attempts: int,
    lease_seconds: float,
    media_type: MediaType | None = None,
    only_failed: bool = False,
    algorithm: HashAlgorithm | None = None,
    shard_index: int = 0,
    shard_count: int = 1,
) -> Select[Any]:
    """The query of `pending_page` (one row more than `limit`, to tell if there is a next)."""
    spec = KINDS[kind]
    table = spec.table
    todo = spec.todo(algorithm or HashAlgorithm.SHA256, lease_seconds)
    if media_type is not None:
        todo = and_(todo, MEDIA.c.media_type == media_type)
    columns = [table.c.id, table.c.revision, *(table.c[c] for c in spec.details)]
    stmt = (
        select(*columns, func.coalesce(FAILURES.c.attempts, 0).label("attempts"))
        .select_from(_with_ledger(kind))
        .where(table.c.id > after_id)
    )
    if only_failed:
        stmt = stmt.where(spec.failed(todo))
    else:
        stmt = stmt.where(todo, _not_quarantined(max_attempts))
    if shard_count > 1:
        stmt = stmt.where(table.c.id % shard_count == shard_index)
    return stmt.order_by(table.c.id).limit(limit + 1)


def _with_ledger(kind: BackfillKind) -> Any:
    """The kind's rows, each with its ledger row of this kind (or NULLs)."""
    table = KINDS[kind].table
    return table.outerjoin(
        FAILURES, and_(FAILURES.c.kind == kind.value, FAILURES.c.record_id == table.c.id)
    )


def _not_quarantined(max_attempts: int) -> ColumnElement[bool]:
    return or_(FAILURES.c.id.is_(None), FAILURES.c.attempts < max_attempts)


def coverage(*, session: Session, max_attempts: int, lease_seconds: float) -> Coverage:
    """Per kind: total in scope, done, pending (what a default run would take now), failed
    (not done, with a failure on record) and quarantined (failed `max_attempts` times).

    Media kinds read the `media_counts` counters (one row, or a few delta rows on
    PostgreSQL) and the failure ledger; no scan of the media table, whatever its size."""
    counts = _media_counts(session)
    kinds = []
    for kind, spec in KINDS.items():
        if spec.counted is None:
            kinds.append(scan_coverage(session, kind, max_attempts, lease_seconds))
            continue
        # file-hashing counts against the default algorithm, as `/pending` does.
        todo = spec.todo(HashAlgorithm.SHA256, lease_seconds)
        ledger = (
            select(func.count(), func.count().filter(FAILURES.c.attempts >= max_attempts))
            .select_from(FAILURES.join(MEDIA, MEDIA.c.id == FAILURES.c.record_id))
            .where(FAILURES.c.kind == kind.value, spec.scope, todo)
        )
        failed, quarantined = session.execute(ledger).one()
        total, to_do = (counts[name] for name in spec.counted)
        kinds.append(
            KindCoverage(
                kind=kind,
                total=total,
                done=total - to_do,
                pending=to_do - quarantined,
                failed=failed,
                quarantined=quarantined,
            )
        )
    return Coverage(kinds=kinds)


def scan_coverage(
    session: Session, kind: BackfillKind, max_attempts: int, lease_seconds: float
) -> KindCoverage:
    """One kind's coverage counted over its table (clip-compile's few projects; the reference
    the counters are tested against)."""
    spec = KINDS[kind]
    todo = spec.todo(HashAlgorithm.SHA256, lease_seconds)
    failed = spec.failed(todo)
    quarantined = and_(failed, FAILURES.c.attempts >= max_attempts)
    stmt = (
        select(
            func.count().label("total"),
            func.count().filter(spec.done(todo)).label("done"),
            func.count().filter(and_(todo, _not_quarantined(max_attempts))).label("pending"),
            func.count().filter(failed).label("failed"),
            func.count().filter(quarantined).label("quarantined"),
        )
        .select_from(_with_ledger(kind))
        .where(spec.scope)
    )
    return KindCoverage(kind=kind, **session.execute(stmt).one()._asdict())


#: The counters of `media_counts`.
COUNTERS = (
    "records",
    "current_records",
    "legacy_records",
    "duration_todo",
    "hash_todo",
    "snr_todo",
)
#: Delta rows (PostgreSQL) past which a coverage read folds them into one.
FOLD_AFTER = 256


def _media_counts(session: Session) -> dict[str, int]:
    """The counters as of this transaction's snapshot, and how many rows hold them."""
    sums = [func.coalesce(func.sum(COUNTS.c[name]), 0) for name in COUNTERS]
    row = session.execute(select(func.count(), *sums).select_from(COUNTS)).one()
    return {
        "rows": int(row[0]),
        **{name: int(v) for name, v in zip(COUNTERS, row[1:], strict=True)},
    }


def fold_counts(session: Session) -> None:
    """Fold the delta rows of `media_counts` into one, in one statement (PostgreSQL; SQLite
    keeps one row). Exact under concurrent writers: it deletes only the rows it sees and adds
    back their sum; rows committed meanwhile stay as they are."""
    if session.get_bind().dialect.name != "postgresql":
        return
    columns = ", ".join(COUNTERS)
    sums = ", ".join(f"COALESCE(SUM({name}), 0)" for name in COUNTERS)
    session.execute(
        text(
            f"WITH gone AS (DELETE FROM media_counts RETURNING {columns}) "
            f"INSERT INTO media_counts ({columns}) SELECT {sums} FROM gone"
        )
    )
    session.commit()


def counts_need_folding(session: Session) -> bool:
    """True when `media_counts` has more than `FOLD_AFTER` rows (PostgreSQL's delta rows)."""
    return _media_counts(session)["rows"] > FOLD_AFTER


def failures_page(
    *,
    session: Session,
    kind: BackfillKind,
    after_id: int,
    limit: int,
    max_attempts: int,
    quarantined_only: bool = False,
) -> FailurePage:
    """The failure ledger of one kind, by record id, with each record's last error."""
    uri = MEDIA.c.uri if KINDS[kind].table is MEDIA else null()
    stmt = (
        select(
            FAILURES.c.record_id,
            uri.label("uri"),
            FAILURES.c.attempts,
            FAILURES.c.last_error,
            FAILURES.c.updated_at,
        )
        .select_from(FAILURES.outerjoin(MEDIA, MEDIA.c.id == FAILURES.c.record_id))
        .where(FAILURES.c.kind == kind.value, FAILURES.c.record_id > after_id)
    )
    if quarantined_only:
        stmt = stmt.where(FAILURES.c.attempts >= max_attempts)
    rows = session.execute(stmt.order_by(FAILURES.c.record_id).limit(limit + 1)).mappings().all()
    items = [
        FailureRecord.model_validate({**r, "quarantined": r["attempts"] >= max_attempts})
        for r in rows[:limit]
    ]
    return FailurePage(
        kind=kind,
        items=items,
        next_after_id=items[-1].record_id if len(rows) > limit else None,
    )
