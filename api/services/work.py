"""What is left to do: pending pages and coverage per kind."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    func,
    literal_column,
    null,
    or_,
    select,
    text,
)
from sqlmodel import Session

from api.models import Media, MediaCounts
from api.schemas import (
    BackfillKind,
    Coverage,
    FailurePage,
    FailureRecord,
    HashAlgorithm,
    KindCoverage,
    PendingFilter,
    PendingItem,
    PendingPage,
    ReprocessMode,
)
from api.services.errors import InvalidRequest
from api.services.kinds import KINDS, KindSpec, kinds_with
from api.services.ledger import FAILURES

MEDIA = Media.__table__  # type: ignore[attr-defined]
COUNTS = MediaCounts.__table__  # type: ignore[attr-defined]
#: `/pending` without filters: today's missing records, every shard.
DEFAULT_FILTER = PendingFilter()


@dataclass(frozen=True, kw_only=True)
class PendingRequest:
    """One page of work to read: `kind`'s records after `after_id`, `limit` at most, of
    those `where` selects; `max_attempts` quarantines, `lease_seconds` is the compile lease."""

    kind: BackfillKind
    after_id: int
    limit: int
    max_attempts: int
    lease_seconds: float
    where: PendingFilter = DEFAULT_FILTER


def pending_page(session: Session, request: PendingRequest) -> PendingPage:
    """One page of work, by id, of the records `request.where` selects (see `pending_query`)."""
    kind, limit = request.kind, request.limit
    stmt = pending_query(request)
    rows = session.execute(stmt).mappings().all()
    items = [PendingItem.model_validate({"record_id": r["id"], **r}) for r in rows[:limit]]
    return PendingPage(
        kind=kind,
        items=items,
        next_after_id=items[-1].record_id if len(rows) > limit else None,
    )


def check_filter(kind: BackfillKind, where: PendingFilter) -> None:
    """Refuse (422) a filter this kind does not take."""
    spec = KINDS[kind]
    if where.algorithm is not None and "algorithm" not in spec.filters:
        only = ", ".join(kinds_with("algorithm"))
        raise InvalidRequest(f"algorithm applies to {only} only")
    if where.media_type is not None and "media_type" not in spec.filters:
        raise InvalidRequest(f"media_type does not apply to {kind}")
    if where.mode not in spec.modes:
        able = ", ".join(k for k, s in KINDS.items() if where.mode in s.modes)
        raise InvalidRequest(f"mode={where.mode} applies to {able} only")
    if where.compute_version is not None and where.mode is not ReprocessMode.STALE:
        raise InvalidRequest("compute_version applies to mode=stale only")


def pending_query(request: PendingRequest) -> Select[Any]:
    """The query of `pending_page` (one row more than `limit`, to tell if there is a next).

    missing: to do, not quarantined (a partial index per kind holds exactly these rows);
    failed: to do with a ledger row, quarantined included; all: in scope, not quarantined;
    stale: done with a value of a compute version older than `where.compute_version`."""
    kind, where, max_attempts = request.kind, request.where, request.max_attempts
    spec = KINDS[kind]
    table = spec.table
    algorithm = where.algorithm or HashAlgorithm.SHA256
    todo = spec.todo(algorithm, request.lease_seconds)
    columns = [table.c.id, table.c.revision, *(table.c[c] for c in spec.details)]
    stmt = (
        select(*columns, func.coalesce(FAILURES.c.attempts, 0).label("attempts"))
        .select_from(_with_ledger(kind))
        .where(table.c.id > request.after_id)
    )
    if where.media_type is not None:
        stmt = stmt.where(MEDIA.c.media_type == where.media_type)
    match where.mode:
        case ReprocessMode.FAILED:
            stmt = stmt.where(spec.failed(todo))
        case ReprocessMode.ALL:
            stmt = stmt.where(spec.scope, _not_quarantined(max_attempts))
        case ReprocessMode.STALE:
            assert spec.version is not None and where.compute_version is not None
            older = spec.version(algorithm) < where.compute_version
            stmt = stmt.where(spec.scope, ~todo, older, _not_quarantined(max_attempts))
        case _:
            stmt = stmt.where(todo, _not_quarantined(max_attempts))
    if where.shard_count > 1:
        stmt = stmt.where(table.c.id % where.shard_count == where.shard_index)
    return stmt.order_by(table.c.id).limit(request.limit + 1)


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
    (not done, with a failure on record), quarantined (failed `max_attempts` times) and the
    done records by compute version. file-hashing is counted per algorithm: sha256 always,
    another algorithm once a record has its digest.

    Media kinds read the `media_counts` counters (one row, or a few delta rows on
    PostgreSQL), the failure ledger, and the rows of versions older than the newest (an
    index range that touches only those); no scan of the media table, whatever its size."""
    counts = _media_counts(session)
    kinds = []
    for kind, spec in KINDS.items():
        if spec.counted is None:
            kinds.append(scan_coverage(session, kind, max_attempts, lease_seconds))
            continue
        algorithms = [HashAlgorithm.SHA256]
        if "algorithm" in spec.filters:
            algorithms += [a for a in HashAlgorithm if a is not HashAlgorithm.SHA256]
        for algorithm in algorithms:
            total, to_do = (counts[name] for name in spec.counted(algorithm))
            if algorithm is not HashAlgorithm.SHA256 and total == to_do:
                continue  # no digest of this algorithm yet: not listed
            kinds.append(
                _counted_coverage(session, kind, spec, algorithm, total, to_do, max_attempts)
            )
    return Coverage(kinds=kinds)


def _counted_coverage(
    session: Session,
    kind: BackfillKind,
    spec: KindSpec,
    algorithm: HashAlgorithm,
    total: int,
    to_do: int,
    max_attempts: int,
) -> KindCoverage:
    todo = spec.todo(algorithm, 0.0)
    ledger = (
        select(func.count(), func.count().filter(FAILURES.c.attempts >= max_attempts))
        .select_from(FAILURES.join(MEDIA, MEDIA.c.id == FAILURES.c.record_id))
        .where(FAILURES.c.kind == kind.value, spec.scope, todo)
    )
    failed, quarantined = session.execute(ledger).one()
    done = total - to_do
    assert spec.version is not None
    return KindCoverage(
        kind=kind,
        algorithm=algorithm if "algorithm" in spec.filters else None,
        total=total,
        done=done,
        pending=to_do - quarantined,
        failed=failed,
        quarantined=quarantined,
        versions=versions_of(session, spec.version(algorithm), done),
    )


def versions_of(session: Session, column: Any, done: int) -> dict[int, int]:
    """Done records by compute version: the newest version stored (MAX over the column's
    index), the rows of each older one counted over an index range that reads only them,
    and the rest (done minus those) counted as the newest.

    `IS NOT NULL` spelled out (MAX skips NULLs anyway): SQLite uses an index partial on
    `<column> IS NOT NULL` only for a query that says so; without it MAX scans the table."""
    newest = session.execute(select(func.max(column)).where(column.is_not(None))).scalar() or 1
    older = session.execute(
        select(column, func.count()).where(column < newest).group_by(column).order_by(column)
    ).all()
    versions = {int(version): int(n) for version, n in older}
    current = done - sum(versions.values())
    if current > 0:
        versions[int(newest)] = current
    return versions


def scan_coverage(
    session: Session,
    kind: BackfillKind,
    max_attempts: int,
    lease_seconds: float,
    algorithm: HashAlgorithm | None = None,
) -> KindCoverage:
    """One kind's coverage counted over its table (clip-compile's few projects; the reference
    the counters are tested against)."""
    spec = KINDS[kind]
    if algorithm is None and "algorithm" in spec.filters:
        algorithm = HashAlgorithm.SHA256
    todo = spec.todo(algorithm or HashAlgorithm.SHA256, lease_seconds)
    failed = spec.failed(todo)
    quarantined = and_(failed, FAILURES.c.attempts >= max_attempts)
    done = spec.done(todo)
    stmt = (
        select(
            func.count().label("total"),
            func.count().filter(done).label("done"),
            func.count().filter(and_(todo, _not_quarantined(max_attempts))).label("pending"),
            func.count().filter(failed).label("failed"),
            func.count().filter(quarantined).label("quarantined"),
        )
        .select_from(_with_ledger(kind))
        .where(spec.scope)
    )
    counted = session.execute(stmt).one()._asdict()
    versions: dict[int, int] = {}
    if spec.version is not None:
        # A literal 1, not a bind parameter: PostgreSQL must see the same GROUP BY expression.
        version = func.coalesce(
            spec.version(algorithm or HashAlgorithm.SHA256), literal_column("1")
        )
        by_version = (
            select(version, func.count())
            .select_from(spec.table)
            .where(spec.scope, done)
            .group_by(version)
        )
        versions = {int(v): int(n) for v, n in session.execute(by_version).all()}
    return KindCoverage(kind=kind, algorithm=algorithm, versions=versions, **counted)


#: The counters of `media_counts`.
COUNTERS = (
    "records",
    "current_records",
    "legacy_records",
    "duration_todo",
    "sha256_todo",
    "blake2b_todo",
    "sha1_todo",
    "md5_todo",
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
