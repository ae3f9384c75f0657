"""The app factory: `uvicorn api.main:app`, or `create_app(settings)` in tests."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from datetime import timedelta
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import __version__
from api.core.config import Settings, get_settings
from api.core.db import engine_for, read_only
from api.metrics import Metrics
from api.models import utcnow
from api.routes import api_router
from api.services.batches import IdempotencyConflict, purge_idempotency_keys
from api.services.projects import Conflict, NotFound

API_PREFIX = "/api/v1"
#: Bodies above this are refused before parsing (1,000 items fit easily).
MAX_BODY_BYTES = 16 * 1024 * 1024

_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")

log = logging.getLogger("api")
access = logging.getLogger("api.access")


class _BodyLimit:
    """Refuse a body over MAX_BODY_BYTES while it streams in: a chunked request carries no
    Content-Length for `limit_body_and_log` to check. FastAPI passes an HTTPException raised
    while it reads the body on to the handlers, so the client gets a plain 413."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > MAX_BODY_BYTES:
                raise StarletteHTTPException(
                    413, f"Request body larger than {MAX_BODY_BYTES} bytes"
                )
            return message

        await self.app(scope, limited, send)


def _is_json(content_type: str) -> bool:
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime == "application/json" or mime.endswith("+json")


def _message(error: dict[str, Any]) -> str:
    msg = str(error.get("msg"))
    if error.get("type") == "json_invalid" and (ctx := error.get("ctx")):
        # "JSON decode error" alone does not say what is wrong or where.
        msg += f": {str(ctx.get('error'))[:200]} at position {error['loc'][-1]}"
    return msg


def _operation_id(route: APIRoute) -> str:
    return f"{route.tags[0]}-{route.name}" if route.tags else route.name


#: Seconds between two purges of expired idempotency keys.
PURGE_INTERVAL = 3600.0


def purge_expired_keys(engine: Engine, hours: float) -> int:
    """Delete idempotency keys older than `hours`; returns how many."""
    with Session(engine) as session:
        return purge_idempotency_keys(session=session, older_than=utcnow() - timedelta(hours=hours))


async def _purge_keys_forever(app: FastAPI) -> None:
    """Keep the idempotency table to its window: purge at start-up, then hourly."""
    settings: Settings = app.state.settings
    while True:
        try:
            purged = await run_in_threadpool(
                purge_expired_keys, app.state.engine, settings.IDEMPOTENCY_KEY_HOURS
            )
            if purged:
                log.info(
                    "purged %d idempotency keys older than %g h",
                    purged,
                    settings.IDEMPOTENCY_KEY_HOURS,
                )
        except OperationalError as exc:  # the database is away: try again next time
            log.warning("idempotency key purge failed: %s", type(exc.orig).__name__)
        await asyncio.sleep(PURGE_INTERVAL)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    purger = asyncio.create_task(_purge_keys_forever(app))
    try:
        yield
    finally:
        purger.cancel()
        with suppress(asyncio.CancelledError):
            await purger


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        lifespan=_lifespan,
        title="corpus-backfills API",
        version=__version__,
        description="Owns the corpus database; every backfill write comes through here.",
        generate_unique_id_function=_operation_id,
    )
    app.state.settings = settings
    app.state.engine = engine_for(settings.DATABASE_URL)
    app.state.read_engine = read_only(app.state.engine)
    app.include_router(api_router, prefix=API_PREFIX)
    app.state.metrics = Metrics()
    app.state.metrics.instrument(app)
    app.add_middleware(_BodyLimit)

    @app.middleware("http")
    async def limit_body_and_log(request: Request, call_next):  # type: ignore[no-untyped-def]
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return JSONResponse(
                {"detail": f"Request body larger than {MAX_BODY_BYTES} bytes"}, status_code=413
            )
        started = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception:
            # What no handler turned into an answer: its traceback, then a plain 500 that
            # gets its access line like every other response.
            log.exception("unhandled error on %s %s", request.method, request.url.path)
            response = JSONResponse({"detail": "Internal server error"}, status_code=500)
        # One line per request; never headers, so never a token.
        access.info(
            "%s %s %s",
            request.method,
            request.url.path,
            response.status_code,
            extra={
                "path": request.url.path,
                "status": response.status_code,
                "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                "flow_run_id": request.headers.get("x-prefect-flow-run-id"),
            },
        )
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI leaves a body that is not declared JSON unparsed, then asks for "a valid
        # dictionary"; say what is wrong instead.
        content_type = request.headers.get("content-type")
        issues = [(tuple(e.get("loc", ())), e.get("type")) for e in exc.errors()]
        unparsed = issues == [(("body",), "model_attributes_type")]
        if (content_type is None and unparsed) or (
            content_type is not None
            and not _is_json(content_type)
            and any(loc[:1] == ("body",) for loc, _ in issues)
        ):
            sent = f"not {content_type[:100]!r}" if content_type else "none was sent"
            return JSONResponse(
                {"detail": f"Content-Type must be application/json ({sent})"}, status_code=415
            )
        # FastAPI echoes each bad input back; a 1,001-item batch would come back whole.
        errors = [
            {"loc": e.get("loc"), "msg": _message(e), "type": e.get("type")} for e in exc.errors()
        ]
        return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 405:
            # Starlette's `Allow` names the methods of the first route on the path only (GET and
            # POST /media are two routes); RFC 9110 wants every method the resource supports.
            allowed = [
                method
                for method in _METHODS
                if any(
                    route.matches({**request.scope, "method": method})[0] is Match.FULL
                    for route in app.router.routes
                )
            ]
            exc.headers = {**(exc.headers or {}), "Allow": ", ".join(allowed)}
        return await http_exception_handler(request, exc)

    @app.exception_handler(NotFound)
    async def _not_found(_: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(Conflict)
    async def _conflict(_: Request, exc: Conflict) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(IdempotencyConflict)
    async def _idem(_: Request, exc: IdempotencyConflict) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(IntegrityError)
    async def _integrity(request: Request, exc: IntegrityError) -> JSONResponse:
        # A constraint the services' own checks did not foresee (they answer races with
        # ON CONFLICT, locks and per-item rejections): the transaction was rolled back whole.
        constraint = getattr(getattr(exc.orig, "diag", None), "constraint_name", None)
        what = constraint or str(exc.orig).splitlines()[0][:200]
        log.warning("integrity conflict on %s %s: %s", request.method, request.url.path, what)
        return JSONResponse(
            {
                "detail": f"Conflict with a concurrent or stored change ({what}); "
                "nothing was written, retry the request"
            },
            status_code=409,
        )

    @app.exception_handler(OperationalError)
    async def _db_down(_: Request, exc: OperationalError) -> JSONResponse:
        log.error("database unavailable: %s", type(exc.orig).__name__)
        return JSONResponse(
            {"detail": "Database unavailable; retry later"},
            status_code=503,
            headers={"Retry-After": "2"},
        )

    return app


def __getattr__(name: str) -> FastAPI:
    # `api.main:app` for uvicorn, built on first use so importing this module is cheap.
    if name == "app":
        return create_app()
    raise AttributeError(name)
