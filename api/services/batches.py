"""Apply result batches of the media kinds: compare with stored values, write the changed
rows in one statement.

Every batch goes through `run_batch`, which adds the idempotency record and the audit row
in the same transaction as the writes, so a batch is applied whole and exactly once.
"""

from __future__ import annotations

import math
from collections import namedtuple
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from functools import lru_cache
from operator import attrgetter
from typing import Any, TypeVar

from pydantic import BaseModel
from sqlalchemy import Connection, select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from api.models import MEDIA, Audit, uri_key, utcnow
from api.schemas import (
    BackfillKind,
    BatchRequest,
    BatchResult,
    DurationResult,
    HashAlgorithm,
    HashResult,
    SnrFrequencyResult,
    Version0Result,
)
from api.services.idempotency import claim_key, remember_response, request_fingerprint
from api.services.ledger import record_invalid, settle_failures
from api.services.outcome import Outcome, dedupe

ResultT = TypeVar("ResultT", bound=BatchResult)


def run_batch(
    *,
    session: Session,
    kind: str,
    body: BaseModel,
    dry_run: bool,
    apply: Callable[[], ResultT],
    result_type: type[ResultT],
    token_name: str,
    idempotency_key: str | None,
    flow_run_id: str | None,
    observe: Callable[[str, BatchResult], None] | None = None,
) -> ResultT:
    """Run `apply` in one transaction with its audit row and idempotency record.

    `observe(kind, result)` is called once the batch is committed, never for a replay."""
    if idempotency_key is not None:
        stored = claim_key(session, idempotency_key, request_fingerprint(kind, body), result_type)
        if stored is not None:
            return stored
    result = apply()
    session.add(
        Audit(
            token_name=token_name,
            kind=kind,
            dry_run=dry_run,
            applied=result.applied,
            unchanged=result.unchanged,
            rejected=len(result.rejected),
            flow_run_id=flow_run_id,
            idempotency_key=idempotency_key,
        )
    )
    if idempotency_key is not None:
        remember_response(session, idempotency_key, result)
    session.commit()
    if observe is not None:
        observe(kind, result)
    return result


def lock_media(session: Session, ids: Iterable[int], *columns: str) -> dict[int, Any]:
    """Current values of the given media rows, locked for update (id order: no deadlocks).

    Each row is a named tuple (`id`, `revision`, `schema_version`, then `columns`). Raw
    driver SQL on the transaction's own cursor: the ids are validated ints, and SQLAlchemy's
    expanding IN and its Row objects cost more per batch than the query itself.
    """
    id_list = sorted(set(ids))
    if not id_list:
        return {}
    conn = session.connection()
    mark = _mark(conn)
    names = ("id", "revision", "schema_version", *(MEDIA.c[c].name for c in columns))
    sql = (
        f"SELECT {', '.join(names)} FROM media "
        f"WHERE id IN ({', '.join([mark] * len(id_list))}) ORDER BY id"
    )
    if conn.dialect.name == "postgresql":
        sql += " FOR UPDATE"
    cursor = conn.connection.cursor()
    try:
        cursor.execute(sql, tuple(id_list))
        fetched = cursor.fetchall()
    finally:
        cursor.close()
    make = _media_row(names)._make
    return {values[0]: make(values) for values in fetched}


@lru_cache(maxsize=64)
def _media_row(names: tuple[str, ...]) -> Any:
    return namedtuple("MediaRow", names)  # noqa: PYI024


def _mark(conn: Connection) -> str:
    return "?" if conn.dialect.paramstyle == "qmark" else "%s"


def write_media(session: Session, changes: list[dict[str, Any]], now: datetime) -> None:
    """One executemany UPDATE of the changed rows, bumping each revision.

    It goes to the driver directly: SQLAlchemy's per-row parameter processing cost more than
    the UPDATE itself. Every value is a plain int/float/str; the timestamp is converted once.
    """
    if not changes:
        return
    conn = session.connection()
    mark = _mark(conn)
    columns = [name for name in changes[0] if name != "id"]
    # The dialect's own conversion (SQLite: the same text the ORM stores), done once, not
    # once per row by the driver's adapter.
    to_db = MEDIA.c.updated_at.type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
    stamp = to_db(now) if to_db else now
    if conn.dialect.name == "postgresql":
        _update_from_values(conn, columns, changes, stamp)
        return
    assignments = ", ".join(f"{MEDIA.c[c].name} = {mark}" for c in columns)
    sql = (
        f"UPDATE media SET {assignments}, revision = revision + 1, updated_at = {mark} "
        f"WHERE id = {mark}"
    )
    conn.exec_driver_sql(
        sql, [(*(change[c] for c in columns), stamp, change["id"]) for change in changes]
    )


def _update_from_values(
    conn: Connection, columns: list[str], changes: list[dict[str, Any]], stamp: Any
) -> None:
    """PostgreSQL: the batch as one `UPDATE ... FROM (VALUES ...)`, so the statement trigger
    that keeps `media_counts` runs once per batch, not once per row (as under executemany)."""
    cast = [f"%s::{MEDIA.c[c].type.compile(dialect=conn.dialect)}" for c in columns]
    row = f"(%s::bigint, {', '.join(cast)})"
    assignments = ", ".join(f"{c} = v.{c}" for c in columns)
    sql = (
        f"UPDATE media SET {assignments}, revision = media.revision + 1, updated_at = %s "
        f"FROM (VALUES {', '.join([row] * len(changes))}) AS v(id, {', '.join(columns)}) "
        "WHERE media.id = v.id"
    )
    params: list[Any] = [stamp]
    for change in changes:
        params += (change["id"], *(change[c] for c in columns))
    # `stamp` comes first in the text: the SET clause precedes the VALUES list.
    conn.exec_driver_sql(sql, tuple(params))


def same(a: float | None, b: float) -> bool:
    return a is not None and math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)


def _equal(stored: Any, sent: Any) -> bool:
    """A stored value equals the one sent (floats within a relative 1e-12)."""
    return same(stored, sent) if isinstance(sent, float) else bool(stored == sent)


def _tuple_getter(names: Sequence[str]) -> Callable[[Any], tuple[Any, ...]]:
    """Read these attributes as one tuple, at C speed (`attrgetter`)."""
    get = attrgetter(*names)
    return get if len(names) > 1 else lambda obj: (get(obj),)


def _check_current(row: Any, rid: int, outcome: Outcome) -> bool:
    if row is None:
        outcome.reject(rid, "record not found")
        return False
    if row.schema_version == 0:
        outcome.reject(rid, "record is a legacy schema_version 0 record; run version-0 first")
        return False
    return True


def _apply_fields(
    *,
    session: Session,
    kind: BackfillKind,
    items: Sequence[BaseModel],
    dry_run: bool,
    fields: dict[str, str],
    version: str,
    check: Callable[[Any, Any], str | None] | None = None,
) -> BatchResult:
    """Apply items that set plain media columns: `fields` maps item attribute -> column, and
    the item's `compute_version` goes to the `version` column beside them. A result of an
    older compute version than the stored value's is refused (a stale run never undoes a
    newer one)."""
    outcome = Outcome()
    kept = dedupe(items, outcome)
    fields = fields | {"compute_version": version}
    columns = list(fields.values())
    extra = columns + (["sample_rate"] if check is not None else [])
    rows = lock_media(session, (i.record_id for i in kept), *extra)
    sent_values, stored_values = _tuple_getter(list(fields)), _tuple_getter(columns)
    for item in kept:
        rid = item.record_id
        row = rows.get(rid)
        if not _check_current(row, rid, outcome):
            continue
        assert row is not None
        if check is not None and (reason := check(item, row)) is not None:
            outcome.reject_invalid(rid, reason)
            continue
        stored_version = getattr(row, version)
        if stored_version is not None and stored_version > item.compute_version:
            outcome.reject(
                rid,
                f"the stored value is of compute version {stored_version}, newer than this "
                f"result's {item.compute_version}",
            )
            continue
        sent, stored = sent_values(item), stored_values(row)
        if sent == stored or all(map(_equal, stored, sent)):
            outcome.unchanged.append(rid)
        else:
            outcome.changes.append({"id": rid, **dict(zip(columns, sent, strict=True))})
    if not dry_run:
        write_media(session, outcome.changes, utcnow())
        settle_failures(session, kind, outcome.done_ids())
        record_invalid(session=session, kind=kind, outcome=outcome)
    return outcome.result(dry_run=dry_run)


def apply_durations(*, session: Session, batch: BatchRequest[DurationResult]) -> BatchResult:
    return _apply_fields(
        session=session,
        kind=BackfillKind.MEDIA_DURATION,
        items=batch.items,
        dry_run=batch.dry_run,
        fields={"duration": "duration"},
        version="duration_version",
    )


def apply_hashes(*, session: Session, batch: BatchRequest[HashResult]) -> BatchResult:
    """Each digest goes to its algorithm's column: a record keeps one digest per algorithm."""
    results = [
        _apply_fields(
            session=session,
            kind=BackfillKind.FILE_HASHING,
            items=[item for item in batch.items if item.algorithm is algorithm],
            dry_run=batch.dry_run,
            fields={"hash": algorithm.value},
            version=f"{algorithm.value}_version",
        )
        for algorithm in HashAlgorithm
        if any(item.algorithm is algorithm for item in batch.items)
    ]
    return BatchResult(
        applied=sum(r.applied for r in results),
        unchanged=sum(r.unchanged for r in results),
        rejected=[rejection for r in results for rejection in r.rejected],
        dry_run=batch.dry_run,
    )


def _check_nyquist(item: SnrFrequencyResult, row: Any) -> str | None:
    if row.sample_rate and item.frequency > row.sample_rate / 2:
        return (
            f"frequency {item.frequency:g} Hz is above the Nyquist limit "
            f"{row.sample_rate / 2:g} Hz of this record"
        )
    return None


def apply_snr_frequency(
    *, session: Session, batch: BatchRequest[SnrFrequencyResult]
) -> BatchResult:
    return _apply_fields(
        session=session,
        kind=BackfillKind.SNR_FREQUENCY,
        items=batch.items,
        dry_run=batch.dry_run,
        fields={"snr": "snr", "frequency": "frequency"},
        version="snr_version",
        check=_check_nyquist,
    )


def apply_version0(*, session: Session, batch: BatchRequest[Version0Result]) -> BatchResult:
    """Upgrade legacy records, compare-and-set on `expected_revision`."""
    outcome = Outcome()
    kept = dedupe(batch.items, outcome)
    cols = ("uri", "media_type", "size_bytes", "sample_rate", "channels")
    kind = BackfillKind.VERSION_0
    rows = lock_media(session, (i.record_id for i in kept), *cols)
    keys = {uri_key(i.uri): i.record_id for i in kept}
    taken: dict[str, int] = dict(
        session.execute(select(MEDIA.c.uri_key, MEDIA.c.id).where(MEDIA.c.uri_key.in_(list(keys))))
        .tuples()
        .all()
    )
    claimed: dict[str, int] = {}
    for item in kept:
        rid, row = item.record_id, rows.get(item.record_id)
        if row is None:
            outcome.reject(rid, "record not found")
            continue
        values = item.model_dump(include=set(cols)) | {"schema_version": 1}
        values["migration_version"] = item.compute_version
        if row.schema_version != 0 and all(getattr(row, c) == values[c] for c in cols):
            outcome.unchanged.append(rid)  # upgraded to these very values already
            continue
        if row.revision != item.expected_revision:
            outcome.reject(
                rid,
                f"conflict: record is at revision {row.revision}, "
                f"expected {item.expected_revision}",
            )
            continue
        if row.schema_version != 0:
            outcome.reject(rid, f"record is already schema_version {row.schema_version}")
            continue
        key = uri_key(item.uri)
        owner = taken.get(key, claimed.get(key))
        if owner is not None and owner != rid:
            outcome.reject_invalid(rid, f"uri {item.uri!r} is already used by record {owner}")
            continue
        claimed[key] = rid
        outcome.changes.append({"id": rid, "uri_key": key, **values})
    if not batch.dry_run:
        _write_upgrades(session, outcome, utcnow())
        settle_failures(session, kind, outcome.done_ids())
        record_invalid(session=session, kind=kind, outcome=outcome)
    return outcome.result(dry_run=batch.dry_run)


def _write_upgrades(session: Session, outcome: Outcome, now: datetime) -> None:
    """Write the upgrades; the unique `uri_key` guards what the check above cannot see: a
    concurrent transaction that took one of the new uris after this one read them. Then the
    batch is written again row by row, each in a savepoint, and only the rows whose uri was
    taken meanwhile are refused (the UPDATE waited for the other transaction's commit)."""
    if not outcome.changes:
        return
    try:
        with session.begin_nested():
            write_media(session, outcome.changes, now)
        return
    except IntegrityError:
        pass
    written = []
    for change in outcome.changes:
        try:
            with session.begin_nested():
                write_media(session, [change], now)
            written.append(change)
        except IntegrityError:
            owner = session.scalar(select(MEDIA.c.id).where(MEDIA.c.uri_key == change["uri_key"]))
            reason = f"uri {change['uri']!r} is already used by record {owner}"
            outcome.reject_invalid(change["id"], reason)
    outcome.changes = written
