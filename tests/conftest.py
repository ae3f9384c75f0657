"""Shared fixtures: a real database (SQLite file, or PostgreSQL when
BACKFILL_TEST_DATABASE_URL names a server), the app over it, tokens, and a live uvicorn API."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _postgres_database(server_url: str) -> Iterator[str]:
    """A fresh database on the given server for this test session, dropped afterwards."""
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(server_url)
    name = f"backfill_test_{uuid.uuid4().hex[:10]}"
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        from api.core.db import engine_for

        engine_for(url.set(database=name).render_as_string(hide_password=False)).dispose()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated database for the session: SQLite file by default."""
    from api.migrate import upgrade

    server = os.environ.get("BACKFILL_TEST_DATABASE_URL")
    if server:
        gen = _postgres_database(server)
        url = next(gen)
        upgrade(url)
        yield url
        gen.close()
    else:
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'backfill.db'}"
        upgrade(url)
        yield url


TABLES = (
    "render_usage",
    "clips",
    "projects",
    "owners",
    "audit",
    "idempotency_keys",
    "backfill_failures",
    "api_tokens",
    "media",
)


@dataclass
class Tokens:
    admin: str
    reader: str
    revoked: str

    def header(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {getattr(self, who)}"}


@pytest.fixture
def clean_db(database_url: str) -> Tokens:
    """Empty every table (keeping the seeded tiers), then issue fresh tokens."""
    from sqlalchemy import text

    from api.core.db import engine_for
    from api.services.tokens import create_token, revoke_token

    engine = engine_for(database_url)
    with engine.begin() as conn:
        for table in TABLES:
            conn.execute(text(f"DELETE FROM {table}"))
        conn.execute(text("DELETE FROM tiers WHERE name <> 'free'"))
    tokens = Tokens(
        admin=create_token(name="admin", role="admin", database_url=database_url),
        reader=create_token(name="reader", role="reader", database_url=database_url),
        revoked=create_token(name="revoked", role="admin", database_url=database_url),
    )
    revoke_token(name="revoked", database_url=database_url)
    return tokens


@pytest.fixture
def app_settings(database_url: str):  # type: ignore[no-untyped-def]
    from api.core.config import Settings

    return Settings(DATABASE_URL=database_url)


@pytest.fixture
def client(clean_db: Tokens, app_settings) -> Iterator[httpx.Client]:  # type: ignore[no-untyped-def]
    """The app in-process (TestClient) with the admin token preset."""
    from fastapi.testclient import TestClient

    from api.main import create_app

    with TestClient(create_app(app_settings), base_url="http://testserver/api/v1") as c:
        c.headers.update(clean_db.header("admin"))
        yield c


@pytest.fixture
def tokens(clean_db: Tokens) -> Tokens:
    return clean_db


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveApi:
    """A real uvicorn process on 127.0.0.1 over a migrated database of its own."""

    database_url: str
    admin_token: str
    reader_token: str
    port: int = field(default_factory=free_port)
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        env = os.environ | {"BACKFILL_DATABASE_URL": self.database_url}
        log = open(self.log_path or os.devnull, "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "api.main:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--no-access-log",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=log,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"API exited with {self.process.returncode}; see {self.log_path}"
                )
            try:
                if httpx.get(f"{self.url}/api/v1/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError("API did not become healthy in time")

    def stop(self, *, kill: bool = False) -> None:
        if self.process is not None and self.process.poll() is None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
            self.process.wait(timeout=15)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def live_api(tmp_path: Path) -> Iterator[LiveApi]:
    """A fresh SQLite database, migrated, with admin and reader tokens, served by uvicorn."""
    from api.migrate import upgrade
    from api.services.tokens import create_token

    url = f"sqlite:///{tmp_path / 'live.db'}"
    upgrade(url)
    api = LiveApi(
        database_url=url,
        admin_token=create_token(name="admin", role="admin", database_url=url),
        reader_token=create_token(name="reader", role="reader", database_url=url),
        log_path=tmp_path / "api.log",
    )
    api.start()
    try:
        yield api
    finally:
        api.stop()
