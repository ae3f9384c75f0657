from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query

from api.deps import Admin, BatchDep, Caller, ReadSessionDep, SessionDep, errors, known_query
from api.models import Media
from api.schemas import (
    MAX_PAGE_LIMIT,
    MediaPage,
    MediaPublic,
    MediaRegisterBatch,
    MediaRegisterResult,
    MediaType,
)
from api.services.media import list_media, register_media

router = APIRouter(prefix="/media", tags=["media"], responses=errors(401, 422, 503))


@router.post("", responses=errors(400, 403, 409, 413, 415))
def create_media(
    session: SessionDep, caller: Admin, batch: BatchDep, body: MediaRegisterBatch
) -> MediaRegisterResult:
    """Register a batch of files; a uri already known is reported, not duplicated."""
    return batch.run(
        session=session,
        caller=caller,
        kind="media",
        body=body,
        apply=lambda: register_media(session=session, batch=body),
        result_type=MediaRegisterResult,
    )


@router.get("", dependencies=[known_query("after_id", "limit", "media_type", "schema_version")])
def read_media_page(
    session: ReadSessionDep,
    _caller: Caller,
    after_id: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_LIMIT)] = 100,
    media_type: MediaType | None = None,
    schema_version: Annotated[int | None, Query(ge=0, le=1)] = None,
) -> MediaPage:
    """Records page by page, by id; pass `next_after_id` back as `after_id`."""
    return list_media(
        session=session,
        after_id=after_id,
        limit=limit,
        media_type=media_type,
        schema_version=schema_version,
    )


@router.get("/{media_id}", responses=errors(404))
def read_media(
    session: ReadSessionDep, _caller: Caller, media_id: Annotated[int, Path(ge=1, le=2**63 - 1)]
) -> MediaPublic:
    """One record with every field."""
    media = session.get(Media, media_id)
    if media is None:
        raise HTTPException(404, detail="Media not found")
    return MediaPublic.model_validate(media)
