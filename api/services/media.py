"""Register and read media records."""

from __future__ import annotations

from sqlalchemy import select
from sqlmodel import Session, col

from api.core.db import upsert
from api.models import Media, uri_key, utcnow
from api.schemas import (
    BatchRequest,
    MediaIn,
    MediaPage,
    MediaPublic,
    MediaRegisterResult,
    MediaType,
    RegisteredMedia,
)

MEDIA = Media.__table__  # type: ignore[attr-defined]


def register_media(*, session: Session, batch: BatchRequest[MediaIn]) -> MediaRegisterResult:
    """Insert unknown uris in one statement; known ones are reported, never duplicated.

    Runs inside `run_batch`, which commits it with its audit row."""
    keys = [uri_key(item.uri) for item in batch.items]
    existing: dict[str, int] = dict(
        session.execute(select(MEDIA.c.uri_key, MEDIA.c.id).where(MEDIA.c.uri_key.in_(keys)))
        .tuples()
        .all()
    )
    now = utcnow()
    fresh: dict[str, dict[str, object]] = {}
    for key, item in zip(keys, batch.items, strict=True):
        if key not in existing and key not in fresh:
            fresh[key] = {
                "uri": item.uri,
                "uri_key": key,
                "media_type": item.media_type,
                "size_bytes": item.size_bytes,
                "schema_version": item.schema_version,
                "revision": 1,
                "created_at": now,
                "updated_at": now,
            }
    created: dict[str, int] = {}
    if fresh and not batch.dry_run:
        stmt = (
            upsert(session, MEDIA)
            .values(list(fresh.values()))
            .on_conflict_do_nothing(index_elements=["uri_key"])
            .returning(MEDIA.c.uri_key, MEDIA.c.id)
        )
        created = dict(session.execute(stmt).tuples().all())
        # A concurrent writer may have won a uri between our read and our insert: ON CONFLICT
        # DO NOTHING waited for its commit, so this read (a new snapshot) sees its rows.
        missing = [k for k in fresh if k not in created]
        if missing:
            existing.update(
                session.execute(
                    select(MEDIA.c.uri_key, MEDIA.c.id).where(MEDIA.c.uri_key.in_(missing))
                )
                .tuples()
                .all()
            )
    result = MediaRegisterResult(dry_run=batch.dry_run)
    reported: set[str] = set()
    for key, item in zip(keys, batch.items, strict=True):
        if key in created and key not in reported:
            result.items.append(RegisteredMedia(uri=item.uri, id=created[key], status="created"))
            result.applied += 1
        elif key in fresh and batch.dry_run and key not in reported:
            result.items.append(RegisteredMedia(uri=item.uri, id=None, status="created"))
            result.applied += 1
        else:
            rid = existing.get(key, created.get(key))
            result.items.append(RegisteredMedia(uri=item.uri, id=rid, status="existing"))
            result.unchanged += 1
        reported.add(key)
    return result


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
        stmt = stmt.where(col(Media.schema_version) == schema_version)
    rows = session.scalars(stmt.order_by(col(Media.id)).limit(limit + 1)).all()
    items = [MediaPublic.model_validate(row) for row in rows[:limit]]
    next_after = items[-1].id if len(rows) > limit else None
    return MediaPage(items=items, next_after_id=next_after)
