"""What is left to do: pending pages and coverage per kind."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, null, or_, select, true
from sqlmodel import Session

from api.models import BackfillFailure, Media, Project, utcnow
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
    ProjectStatus,
)

MEDIA = Media.__table__  # type: ignore[attr-defined]
PROJECTS = Project.__table__  # type: ignore[attr-defined]
FAILURES = BackfillFailure.__table__  # type: ignore[attr-defined]


def _media_todo(kind: BackfillKind, algorithm: HashAlgorithm | None) -> ColumnElement[bool]:
    """Rows of `media` this kind still has to fill."""
    current = MEDIA.c.schema_version >= 1
    if kind is BackfillKind.MEDIA_DURATION:
        return and_(current, MEDIA.c.duration.is_(None))
    if kind is BackfillKind.FILE_HASHING:
        # With an algorithm, a hash made with another one is to be redone; without, any counts.
        if algorithm is None:
            return and_(current, MEDIA.c.hash.is_(None))
        return and_(
            current,
            or_(MEDIA.c.hash.is_(None), MEDIA.c.hash_algorithm.is_distinct_from(algorithm.value)),
        )
    if kind is BackfillKind.SNR_FREQUENCY:
        return and_(current, or_(MEDIA.c.snr.is_(None), MEDIA.c.frequency.is_(None)))
    if kind is BackfillKind.VERSION_0:
        version0: ColumnElement[bool] = MEDIA.c.schema_version == 0
        return version0
    raise ValueError(f"{kind} is not a media kind")


def _media_scope(kind: BackfillKind) -> ColumnElement[bool]:
    """Rows of `media` a kind is about at all (its coverage total)."""
    return true() if kind is BackfillKind.VERSION_0 else MEDIA.c.schema_version >= 1


def _compile_todo(lease_seconds: float) -> ColumnElement[bool]:
    stale = utcnow() - timedelta(seconds=lease_seconds)
    return or_(
        PROJECTS.c.status == ProjectStatus.QUEUED.value,
        and_(PROJECTS.c.status == ProjectStatus.COMPILING.value, PROJECTS.c.updated_at < stale),
    )


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
    if kind is BackfillKind.CLIP_COMPILE:
        table, todo = (
            PROJECTS,
            (
                PROJECTS.c.status == ProjectStatus.FAILED.value
                if only_failed
                else _compile_todo(lease_seconds)
            ),
        )
        columns: list[Any] = [PROJECTS.c.id, PROJECTS.c.revision]
    else:
        if kind is BackfillKind.FILE_HASHING:
            algorithm = algorithm or HashAlgorithm.SHA256
        table, todo = MEDIA, _media_todo(kind, algorithm)
        columns = [
            MEDIA.c.id,
            MEDIA.c.revision,
            MEDIA.c.uri,
            MEDIA.c.media_type,
            MEDIA.c.size_bytes,
            MEDIA.c.sample_rate,
            MEDIA.c.channels,
            MEDIA.c.schema_version,
        ]
        if media_type is not None:
            todo = and_(todo, MEDIA.c.media_type == media_type)
    ledger = FAILURES.c.kind == kind.value
    stmt = (
        select(*columns, func.coalesce(FAILURES.c.attempts, 0).label("attempts"))
        .select_from(table.outerjoin(FAILURES, and_(ledger, FAILURES.c.record_id == table.c.id)))
        .where(todo, table.c.id > after_id)
    )
    if not only_failed:
        stmt = stmt.where(_not_quarantined(max_attempts))
    elif kind is not BackfillKind.CLIP_COMPILE:
        # A failed project is `failed` even when failed by hand, without a ledger row.
        stmt = stmt.where(FAILURES.c.id.is_not(None))
    if shard_count > 1:
        stmt = stmt.where(table.c.id % shard_count == shard_index)
    rows = session.execute(stmt.order_by(table.c.id).limit(limit + 1)).mappings().all()
    items = [PendingItem.model_validate({"record_id": r["id"], **r}) for r in rows[:limit]]
    return PendingPage(
        kind=kind,
        items=items,
        next_after_id=items[-1].record_id if len(rows) > limit else None,
    )


def _not_quarantined(max_attempts: int) -> ColumnElement[bool]:
    return or_(FAILURES.c.id.is_(None), FAILURES.c.attempts < max_attempts)


def coverage(*, session: Session, max_attempts: int, lease_seconds: float) -> Coverage:
    """Per kind: total in scope, done, pending (what a default run would take now), failed
    (not done, with a failure on record) and quarantined (failed `max_attempts` times)."""
    kinds = []
    for kind in BackfillKind:
        if kind is BackfillKind.CLIP_COMPILE:
            table, scope = PROJECTS, PROJECTS.c.status != ProjectStatus.DRAFT.value
            done = PROJECTS.c.status == ProjectStatus.COMPILED.value
            todo = _compile_todo(lease_seconds)
            failed = PROJECTS.c.status == ProjectStatus.FAILED.value
        else:
            table, scope = MEDIA, _media_scope(kind)
            # file-hashing counts against the default algorithm, as `/pending` does.
            todo = _media_todo(kind, HashAlgorithm.SHA256)
            done = ~todo
            failed = and_(FAILURES.c.id.is_not(None), todo)
        quarantined = and_(failed, FAILURES.c.attempts >= max_attempts)
        stmt = (
            select(
                func.count(),
                func.count().filter(done),
                func.count().filter(and_(todo, _not_quarantined(max_attempts))),
                func.count().filter(failed),
                func.count().filter(quarantined),
            )
            .select_from(
                table.outerjoin(
                    FAILURES,
                    and_(FAILURES.c.kind == kind.value, FAILURES.c.record_id == table.c.id),
                )
            )
            .where(scope)
        )
        total, n_done, pending, n_failed, n_quarantined = session.execute(stmt).one()
        kinds.append(
            KindCoverage(
                kind=kind,
                total=total,
                done=n_done,
                pending=pending,
                failed=n_failed,
                quarantined=n_quarantined,
            )
        )
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
    uri = MEDIA.c.uri if kind is not BackfillKind.CLIP_COMPILE else null()
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
