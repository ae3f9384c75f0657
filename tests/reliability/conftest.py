"""Fixtures for the reliability suite.

A real API process (uvicorn on 127.0.0.1, `tests.conftest.LiveApi`) over the session's
database, emptied per test: a SQLite file, or PostgreSQL when BACKFILL_TEST_DATABASE_URL
names a server. Prefect's test server (once per session), a media root, the client
environment pointed at the API, and a plain read-only view of the database, so the tests
check what was really written rather than what the API says it wrote.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import LiveApi, Tokens
from tests.flows.conftest import media_root, prefect_api_url  # noqa: F401 - fixtures
from tests.reliability.helpers import MAX_RETRIES, Db


@pytest.fixture
def api(database_url: str, clean_db: Tokens, tmp_path: Path) -> Iterator[LiveApi]:
    """uvicorn in its own process over the session's (emptied) database."""
    live = LiveApi(
        database_url=database_url,
        admin_token=clean_db.admin,
        reader_token=clean_db.reader,
        log_path=tmp_path / "api.log",
    )
    live.start()
    try:
        yield live
    finally:
        live.stop(kill=True)


@pytest.fixture
def db(database_url: str) -> Iterator[Db]:
    reader = Db(database_url)
    yield reader
    reader.dispose()


@pytest.fixture
def flow_env(api: LiveApi, media_root: Path, monkeypatch: pytest.MonkeyPatch) -> LiveApi:  # noqa: F811
    """BACKFILL_* pointed at the live API and the media root; no database URL anywhere."""
    monkeypatch.setenv("BACKFILL_API_URL", api.url)
    monkeypatch.setenv("BACKFILL_API_TOKEN", api.admin_token)
    monkeypatch.setenv("BACKFILL_MEDIA_ROOT", str(media_root))
    monkeypatch.setenv("BACKFILL_MAX_RETRIES", str(MAX_RETRIES))
    monkeypatch.delenv("BACKFILL_OUTPUT_ROOT", raising=False)
    monkeypatch.delenv("BACKFILL_DATABASE_URL", raising=False)
    return api
