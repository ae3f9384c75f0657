import threading
from collections.abc import Callable, Coroutine
from contextlib import AbstractContextManager, nullcontext
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response
from fastapi.routing import APIRoute
from pydantic import TypeAdapter, ValidationError
from sqlmodel import Session

from api.deps import Admin, BatchDep, Caller, ReadSessionDep, SessionDep, errors, known_query
from api.exception_handlers import _is_json
from api.models import Media
from api.routes.paging import AfterId, Limit
from api.schemas import (
    MediaPage,
    MediaPublic,
    MediaRegisterBatch,
    MediaRegisterResult,
    MediaType,
)
from api.services.media import list_media, prepare_media, register_media

router = APIRouter(prefix="/media", tags=["media"], responses=errors(401, 422, 503))


class JsonBodyRoute(APIRoute):
    """A route whose JSON body is validated in one pass, straight from the raw bytes
    (pydantic's `validate_json`), instead of FastAPI's `json.loads` then `validate_python`.

    The validated model is left where FastAPI looks for the parsed body (`Request.json()`'s
    cache), and FastAPI passes an instance of the body's own model through unchanged. A body
    that does not validate is left to FastAPI, which parses it again and answers as for any
    route: the same 400, 415 and 422 errors."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        body_type = self.body_field.field_info.annotation if self.body_field else None
        assert body_type is not None, "JsonBodyRoute needs a body parameter"
        adapter: TypeAdapter[Any] = TypeAdapter(body_type)

        async def route(request: Request) -> Response:
            if _is_json(request.headers.get("content-type", "")):
                try:
                    request._json = adapter.validate_json(await request.body())
                except ValidationError:
                    pass  # FastAPI parses it again and says what is wrong
            return await handler(request)

        return route


#: SQLite has one writer. Batches of this process queue here and the next one starts the moment
#: the last commits, instead of polling the write lock in SQLite's busy handler, which sleeps
#: 10-25 ms at a time by then (two imports in flight always meet there).
_SQLITE_WRITER = threading.Lock()


def _one_writer(session: Session) -> AbstractContextManager[object]:
    return _SQLITE_WRITER if session.get_bind().dialect.name == "sqlite" else nullcontext()


def create_media(
    session: SessionDep, caller: Admin, batch: BatchDep, body: MediaRegisterBatch
) -> MediaRegisterResult:
    """Register a batch of files; a uri already known is reported, not duplicated."""
    # The uri keys and the row values are computed before the transaction takes the
    # database's write lock (SQLite), so a concurrent batch waits for the INSERT alone.
    prepared = prepare_media(body)
    with _one_writer(session):
        return batch.run(
            session=session,
            caller=caller,
            kind="media",
            body=body,
            apply=lambda: register_media(session=session, batch=body, prepared=prepared),
            result_type=MediaRegisterResult,
        )


router.add_api_route(
    "",
    create_media,
    methods=["POST"],
    responses=errors(400, 403, 409, 413, 415),
    route_class_override=JsonBodyRoute,
)


@router.get("", dependencies=[known_query("after_id", "limit", "media_type", "schema_version")])
def read_media_page(
    session: ReadSessionDep,
    _caller: Caller,
    after_id: AfterId = 0,
    limit: Limit = 100,
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
