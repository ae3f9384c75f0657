"""Fixtures of the API tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import postgres_database


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    """A new, empty database for a migration test: a fresh one on the PostgreSQL server of
    BACKFILL_TEST_DATABASE_URL when it is set, else a SQLite file."""
    server = os.environ.get("BACKFILL_TEST_DATABASE_URL")
    if server:
        databases = postgres_database(server)
        yield next(databases)
        databases.close()
    else:
        yield f"sqlite:///{tmp_path / 'migrate.db'}"
