"""What is left to do: pending pages and coverage per kind."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, and_, func, null, or_, select
from sqlmodel import Session

from api.models import Media
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
    rows = session.execute(stmt.order_by(table.c.id).limit(limit + 1)).mappings().all()
    items = [PendingItem.model_validate({"record_id": r["id"], **r}) for r in rows[:limit]]
    return PendingPage(
        kind=kind,
        items=items,
        next_after_id=items[-1].record_id if len(rows) > limit else None,
    )


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
    (not done, with a failure on record) and quarantined (failed `max_attempts` times)."""
    kinds = []
    for kind, spec in KINDS.items():
        # file-hashing counts against the default algorithm, as `/pending` does.
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
        kinds.append(KindCoverage(kind=kind, **session.execute(stmt).one()._asdict()))
    return Coverage(kinds=kinds)


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
