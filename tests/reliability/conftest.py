"""Fixtures for the reliability suite.

One real API process for the session (uvicorn on 127.0.0.1, `tests.conftest.LiveApi`) over
the session's database, emptied per test: a SQLite file, or PostgreSQL when BACKFILL_TEST_DATABASE_URL
names a server. The client environment pointed at the API (over tests/conftest.py's Prefect
test server and media root), and a plain read-only view of the database, so the tests
check what was really written rather than what the API says it wrote.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import LiveApi, Tokens
from tests.reliability.helpers import MAX_RETRIES, Db


@pytest.fixture(scope="session")
def api_server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApi]:
    """One uvicorn for the session over the session's database (tokens set per test)."""
    live = LiveApi(
        database_url=database_url,
        admin_token="",
        reader_token="",
        log_path=tmp_path_factory.mktemp("reliability-api") / "api.log",
    )
    live.start()
    try:
        yield live
    finally:
        live.stop(kill=True)


@pytest.fixture
def api(api_server: LiveApi, clean_db: Tokens) -> LiveApi:
    """The session's uvicorn over the emptied database, with this test's tokens; started
    again first when an earlier test (a crash test, say) left it stopped."""
    api_server.admin_token = clean_db.admin
    api_server.reader_token = clean_db.reader
    if api_server.process is None or api_server.process.poll() is not None:
        api_server.stop(kill=True)
        api_server.start()
    return api_server


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
