"""Fixtures of the race suite: one real uvicorn API per database, SQLite and PostgreSQL.

The PostgreSQL side needs no setup: BACKFILL_TEST_DATABASE_URL names a server to use, or else,
when `initdb` and `pg_ctl` are found (on PATH or in Debian's /usr/lib/postgresql/*/bin), a
throwaway cluster is started for the session with `.ci/pg.sh` (as the unprivileged `postgres`
user when root) and stopped at teardown. Only when neither is there are the PostgreSQL cases
skipped, with that reason.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import NullPool

from tests.conftest import ROOT, LiveApi, live_api_over, postgres_database
from tests.helpers import empty_tables

#: Concurrent clients per burst.
N = 8


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str | None]:
    """A PostgreSQL server URL for the session, or None when none can be had."""
    if url := os.environ.get("BACKFILL_TEST_DATABASE_URL"):
        yield url
        return
    # Debian keeps the server binaries off PATH, under /usr/lib/postgresql/<version>/bin.
    path = os.pathsep.join(
        [os.environ.get("PATH", ""), *sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    )
    if not (shutil.which("initdb", path=path) and shutil.which("pg_ctl", path=path)):
        yield None
        return
    env = os.environ | {"PATH": path}
    started = subprocess.run(
        ["bash", str(ROOT / ".ci" / "pg.sh"), "start"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )
    if started.returncode != 0:
        pytest.fail(f".ci/pg.sh start failed:\n{started.stderr[-2000:]}")
    exports = dict(
        line.removeprefix("export ").split("=", 1)
        for line in started.stdout.splitlines()
        if line.startswith("export ")
    )
    try:
        yield exports["BACKFILL_TEST_DATABASE_URL"]
    finally:
        subprocess.run(
            ["bash", str(ROOT / ".ci" / "pg.sh"), "stop", exports["PG_DIR"]],
            capture_output=True,
            timeout=120,
            check=False,
            env=env,
        )


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def race_api(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    pg_server: str | None,
) -> Iterator[LiveApi]:
    """uvicorn in its own process over a migrated database of this backend."""
    folder = tmp_path_factory.mktemp(f"race-{request.param}")
    databases: Iterator[str]
    if request.param == "sqlite":
        databases = iter([f"sqlite:///{folder / 'race.db'}"])
    elif pg_server is None:
        pytest.skip("PostgreSQL cases need initdb and pg_ctl on PATH or BACKFILL_TEST_DATABASE_URL")
    else:
        databases = postgres_database(pg_server, prefix="backfill_race")
    url = next(databases)
    try:
        api = live_api_over(url, folder)
        api.start()
        try:
            yield api
        finally:
            api.stop()
            from api.core.db import engine_for

            engine_for(url).dispose()
    finally:
        for _ in databases:  # drops the PostgreSQL database
            pass


class Race:
    """The live API of one backend, an empty database, and a direct view of it."""

    def __init__(self, api: LiveApi) -> None:
        self.api = api
        self.engine: Engine = create_engine(api.database_url, poolclass=NullPool)
        self.backend = self.engine.dialect.name

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.api.url}/api/v1",
            headers={"Authorization": f"Bearer {self.api.admin_token}"},
            timeout=120,
        )

    def burst(self, request: Callable[[httpx.Client, int], httpx.Response]) -> list[httpx.Response]:
        """`request(client, i)` for i in 0..N-1, each on its own connection, let go together
        behind a barrier once every client is connected."""
        barrier = threading.Barrier(N, timeout=120)

        def one(i: int) -> httpx.Response:
            with self.client() as c:
                c.get("/health").raise_for_status()  # the connection is open before the go
                barrier.wait()
                return request(c, i)

        with ThreadPoolExecutor(N) as pool:
            return list(pool.map(one, range(N)))

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(text(sql), params).scalar()

    def rows(self, sql: str, **params: Any) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(text(sql), params).all())

    def record(self, figures: dict[str, Any]) -> None:
        """Append what a scenario saw to $BACKFILL_RACE_FIGURES (JSON lines), when set: the
        before/after figures of docs/architecture.md come from there."""
        if path := os.environ.get("BACKFILL_RACE_FIGURES"):
            test = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]
            with open(path, "a") as out:
                out.write(json.dumps({"test": test, **figures}, default=str) + "\n")


@pytest.fixture
def race(race_api: LiveApi) -> Iterator[Race]:
    r = Race(race_api)
    empty_tables(race_api.database_url, keep_tokens=True)
    try:
        yield r
    finally:
        r.engine.dispose()


def statuses(responses: list[httpx.Response]) -> list[int]:
    return [r.status_code for r in responses]
