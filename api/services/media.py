"""Register and read media records."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import orjson
from sqlalchemy import Connection, literal_column, select
from sqlmodel import Session, col

from api.models import MEDIA, Media, uri_key, utcnow
from api.schemas import (
    BatchRequest,
    MediaIn,
    MediaPage,
    MediaPublic,
    MediaRegisterResult,
    MediaType,
)


@dataclass(frozen=True)
class PreparedMedia:
    """What `register_media` computes before it touches the database: each item's uri key,
    and the first item of each key with its row values (without the timestamps)."""

    keys: list[str]
    rows: dict[str, tuple[object, ...]]


def prepare_media(batch: BatchRequest[MediaIn]) -> PreparedMedia:
    keys = [uri_key(item.uri) for item in batch.items]
    rows: dict[str, tuple[object, ...]] = {}
    for key, item in zip(keys, batch.items, strict=True):
        if key not in rows:
            rows[key] = (item.uri, key, item.media_type, item.size_bytes, item.schema_version, 1)
    return PreparedMedia(keys, rows)


def register_media(
    *, session: Session, batch: BatchRequest[MediaIn], prepared: PreparedMedia | None = None
) -> MediaRegisterResult:
    """Insert unknown uris in one statement; known ones are reported, never duplicated.

    Runs inside `run_batch`, which commits it with its audit row. One multi-row
    `INSERT ... ON CONFLICT (uri_key) DO NOTHING RETURNING uri_key, id` straight to the driver
    (SQLAlchemy compiling 8,000 bind parameters cost ten times the INSERT itself), then one
    SELECT for the uris that were already there. `prepared` (from `prepare_media`, which the
    route calls before the transaction starts) saves the hashing under the write lock."""
    prepared = prepared or prepare_media(batch)
    keys, fresh = prepared.keys, prepared.rows
    conn = session.connection()
    created: dict[str, int] = {}
    if batch.dry_run:
        existing = _ids_of(conn, list(fresh))
    else:
        created = _insert_new(conn, fresh)
        # A concurrent writer may have won a uri: ON CONFLICT DO NOTHING waited for its
        # commit, so this read (a new statement, a new snapshot) sees its row.
        existing = _ids_of(conn, [k for k in fresh if k not in created])
    # Plain dicts validated in one call: a model built per item cost twice as much.
    items: list[dict[str, object]] = []
    reported: set[str] = set()
    applied = 0
    for key, item in zip(keys, batch.items, strict=True):
        if key in reported or key in existing:
            rid = existing.get(key, created.get(key))
            items.append({"uri": item.uri, "id": rid, "status": "existing"})
        else:
            items.append({"uri": item.uri, "id": created.get(key), "status": "created"})
            applied += 1
        reported.add(key)
    return MediaRegisterResult.model_validate(
        {
            "items": items,
            "applied": applied,
            "unchanged": len(items) - applied,
            "dry_run": batch.dry_run,
        }
    )


#: Columns `register_media` writes, in the order of its VALUES rows, and their PostgreSQL
#: types (the JSON values are cast to them).
_INSERTED = ("uri", "uri_key", "media_type", "size_bytes", "schema_version", "revision")
_PG_TYPES = ("text", "varchar", "varchar", "bigint", "integer", "bigint")


def _insert_new(conn: Connection, fresh: dict[str, tuple[object, ...]]) -> dict[str, int]:
    """Insert these rows unless their uri is known; the ids of those inserted, by key."""
    if not fresh:
        return {}
    to_db = MEDIA.c.created_at.type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
    now = utcnow()
    stamp = to_db(now) if to_db else now
    head = f"INSERT INTO media ({', '.join(_INSERTED)}, created_at, updated_at) "
    tail = " ON CONFLICT (uri_key) DO NOTHING RETURNING uri_key, id"
    if conn.dialect.name == "postgresql":
        # The rows as one JSON array of arrays: the statement is the same whatever the batch
        # size, so psycopg converts it once (a VALUES list of 8,000 placeholders was split by
        # its Python query parser on every batch: more than half the API's time per batch).
        # JSON rather than an array per column: 1.2 ms of the API's CPU per 1,000 rows where
        # psycopg dumping the arrays took 4.4, and PostgreSQL reads jsonb as fast.
        columns = ", ".join(f"(r->>{i})::{t}" for i, t in enumerate(_PG_TYPES))
        sql = f"{head}SELECT {columns}, %s, %s FROM jsonb_array_elements(%s::jsonb) AS r{tail}"
        rows = orjson.dumps(list(fresh.values())).decode()
        return dict(_fetch(conn, sql, [stamp, stamp, rows]))
    row = f"({', '.join('?' * (len(_INSERTED) + 2))})"
    params: list[object] = []
    for values in fresh.values():
        params += values
        params += (stamp, stamp)
    return dict(_fetch(conn, f"{head}VALUES {', '.join([row] * len(fresh))}{tail}", params))


def _ids_of(conn: Connection, keys: list[str]) -> dict[str, int]:
    """The ids of the records with these uri keys that exist."""
    if not keys:
        return {}
    if conn.dialect.name == "postgresql":
        sql = "SELECT uri_key, id FROM media WHERE uri_key = ANY(%b::varchar[])"
        return dict(_fetch(conn, sql, [keys]))
    marks = ", ".join("?" * len(keys))
    return dict(_fetch(conn, f"SELECT uri_key, id FROM media WHERE uri_key IN ({marks})", keys))


def _fetch(conn: Connection, sql: str, params: Sequence[object]) -> list[tuple[str, int]]:
    cursor = conn.connection.cursor()
    try:
        cursor.execute(sql, tuple(params))
        return [(key, rid) for key, rid in cursor.fetchall()]
    finally:
        cursor.close()


def list_media(
    *,
    session: Session,
    after_id: int,
    limit: int,
    media_type: MediaType | None = None,
    schema_version: int | None = None,
) -> MediaPage:
    """One keyset page of records, by id."""
    stmt = select(Media).where(col(Media.id) > after_id)
    if media_type is not None:
        stmt = stmt.where(col(Media.media_type) == media_type)
    if schema_version is not None:
        # A literal (0 or 1): the planner matches `schema_version = 0` to the partial index
        # of legacy rows only against a value it sees when it plans.
        stmt = stmt.where(col(Media.schema_version) == literal_column(str(int(schema_version))))
    rows = session.scalars(stmt.order_by(col(Media.id)).limit(limit + 1)).all()
    items = [MediaPublic.model_validate(row) for row in rows[:limit]]
    next_after = items[-1].id if len(rows) > limit else None
    return MediaPage(items=items, next_after_id=next_after)
