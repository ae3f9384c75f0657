"""The app factory: `uvicorn api.main:app`, or `create_app(settings)` in tests."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.routing import APIRoute

from api import __version__
from api.core.config import Settings, get_settings
from api.core.db import engine_for, read_only
from api.exception_handlers import register_exception_handlers
from api.lifespan import lifespan
from api.metrics import Metrics
from api.middleware import add_middleware
from api.routes import api_router

API_PREFIX = "/api/v1"


def _operation_id(route: APIRoute) -> str:
    return f"{route.tags[0]}-{route.name}" if route.tags else route.name


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        lifespan=lifespan,
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
    add_middleware(app)
    register_exception_handlers(app)
    return app


def __getattr__(name: str) -> FastAPI:
    # `api.main:app` for uvicorn, built on first use so importing this module is cheap.
    if name == "app":
        return create_app()
    raise AttributeError(name)
