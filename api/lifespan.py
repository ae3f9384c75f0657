"""What runs beside the app while it serves: the hourly purge of expired idempotency keys."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from datetime import timedelta

from fastapi import FastAPI
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from api.core.config import Settings
from api.models import utcnow
from api.services.idempotency import purge_idempotency_keys

#: Seconds between two purges of expired idempotency keys.
PURGE_INTERVAL = 3600.0

log = logging.getLogger("api")


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
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    purger = asyncio.create_task(_purge_keys_forever(app))
    try:
        yield
    finally:
        purger.cancel()
        with suppress(asyncio.CancelledError):
            await purger
