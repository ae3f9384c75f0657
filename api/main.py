"""The app factory: `uvicorn api.main:app`, or `create_app(settings)` in tests."""

from __future__ import annotations

import logging
import time

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from sqlalchemy.exc import OperationalError

from api import __version__
from api.core.config import Settings, get_settings
from api.core.db import engine_for
from api.metrics import Metrics
from api.routes import api_router
from api.services.batches import IdempotencyConflict
from api.services.projects import Conflict, NotFound

API_PREFIX = "/api/v1"
#: Bodies above this are refused before parsing (1,000 items fit easily).
MAX_BODY_BYTES = 16 * 1024 * 1024

log = logging.getLogger("api")
access = logging.getLogger("api.access")


def _operation_id(route: APIRoute) -> str:
    return f"{route.tags[0]}-{route.name}" if route.tags else route.name


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="corpus-backfills API",
        version=__version__,
        description="Owns the corpus database; every backfill write comes through here.",
        generate_unique_id_function=_operation_id,
    )
    app.state.settings = settings
    app.state.engine = engine_for(settings.DATABASE_URL)
    app.include_router(api_router, prefix=API_PREFIX)
    app.state.metrics = Metrics()
    app.state.metrics.instrument(app)

    @app.middleware("http")
    async def limit_body_and_log(request: Request, call_next):  # type: ignore[no-untyped-def]
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return JSONResponse(
                {"detail": f"Request body larger than {MAX_BODY_BYTES} bytes"}, status_code=413
            )
        started = time.perf_counter()
        response = await call_next(request)
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
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI echoes each bad input back; a 1,001-item batch would come back whole.
        errors = [
            {"loc": e.get("loc"), "msg": e.get("msg"), "type": e.get("type")} for e in exc.errors()
        ]
        return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)

    @app.exception_handler(NotFound)
    async def _not_found(_: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(Conflict)
    async def _conflict(_: Request, exc: Conflict) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(IdempotencyConflict)
    async def _idem(_: Request, exc: IdempotencyConflict) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

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
