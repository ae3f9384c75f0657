"""Service tests: service functions called with a bare SQLModel Session over the migrated
test database (a SQLite file, or PostgreSQL when BACKFILL_TEST_DATABASE_URL is set)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlmodel import Session

from tests.conftest import TABLES


@pytest.fixture
def session(database_url: str) -> Iterator[Session]:
    """A session over an emptied database (the seeded `free` tier stays)."""
    from api.core.db import engine_for

    engine = engine_for(database_url)
    with engine.begin() as conn:
        for table in TABLES:
            conn.execute(text(f"DELETE FROM {table}"))
        conn.execute(text("DELETE FROM tiers WHERE name <> 'free'"))
    with Session(engine, expire_on_commit=False) as session:
        yield session
