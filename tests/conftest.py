"""Shared fixtures: a real database (SQLite file, or PostgreSQL when
BACKFILL_TEST_DATABASE_URL names a server), the app over it, tokens, a live uvicorn API, a
media root, and Prefect's test server (one for the whole run, shared by the xdist workers)."""

from __future__ import annotations

import compileall
import fcntl
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from api.cli import uvicorn_command
from tests.helpers import TABLES, empty_tables
from tests.reaper import session_members, stop_sessions

__all__ = [
    "TABLES",
    "session_members",
    "stop_sessions",
]  # re-exported: other tests read them from here

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[1]

# pytest-xdist's workers start with COLUMNS=80 set: a rich console made at import (a CLI's)
# would be 80 columns wide whatever a test asks for, unlike in a serial run.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.pop("COLUMNS", None)

# The `uv run ...` commands the tests run as documented need no sync: `uv run pytest` has just
# done it. With `compile-bytecode` (pyproject.toml) each sync, even one with nothing to install,
# compiles the whole environment again (~0.6 s of CPU, astral-sh/uv#12202).
os.environ.setdefault("UV_NO_SYNC", "1")

#: The project's own packages, which `uv sync` does not compile (they are linked, not
#: installed): `compile_project` does, once a run.
PROJECT_PACKAGES = ("api", "flows", "ops", "deployments", "benchmarks")


def compile_project() -> None:
    """Write the .pyc files of the project's own modules (to the `__pycache__` folders git
    ignores). Where PYTHONDONTWRITEBYTECODE is set (these machines), Python writes none, so
    every API, flow run and CLI call of the run compiled them from source again: about 0.2 s
    of CPU a process (docs/testing.md, ninth look)."""
    for package in PROJECT_PACKAGES:
        compileall.compile_dir(ROOT / package, quiet=2)


def server_timeout() -> float:
    """Seconds a fixture waits for one of our API servers to answer: the one setting
    BACKFILL_TEST_SERVER_TIMEOUT (default 180, enough at a load average of 8 on 2 cores)."""
    return float(os.environ.get("BACKFILL_TEST_SERVER_TIMEOUT", "180"))


def prefect_server_timeout() -> float:
    """Seconds to wait for a Prefect server (or a worker to come online): twice the above,
    it imports far more and migrates its own database first."""
    return 2 * server_timeout()


# Every process group a test started (leader pid -> what it is), until it is stopped.
# pytest_sessionfinish kills (and reports) whatever is still alive in any of them.
STARTED: dict[int, str] = {}


#: Where `spawn` names each session it starts for the run's reaper (tests/reaper.py), which
#: stops them if the run is killed before it could; None outside a run (set by pytest_configure).
SESSIONS: Path | None = None


def spawn(what: str, args: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """Popen in a session of its own (so the whole tree can be killed), registered until
    `stop_group` has emptied it."""
    process: subprocess.Popen[Any] = subprocess.Popen(args, start_new_session=True, **kwargs)
    STARTED[process.pid] = what
    name_session(process.pid, what)
    return process


def name_session(sid: int, what: str) -> None:
    """Name session `sid` for the run's reaper, which stops it if the run is killed."""
    if SESSIONS is not None:
        (SESSIONS / str(sid)).write_text(what)


def stop_named_session(sid: int, timeout: float = 20.0, *, kill: bool = False) -> None:
    """Stop session `sid` (`stop_sessions`), then take its name off the reaper's list."""
    stop_sessions([sid], timeout, kill=kill)
    if SESSIONS is not None:
        (SESSIONS / str(sid)).unlink(missing_ok=True)


def stop_group(
    process: subprocess.Popen[Any], timeout: float = 20.0, *, kill: bool = False
) -> None:
    """Stop a process started by `spawn` and every child it started: SIGTERM (SIGKILL when
    `kill`), SIGKILL after `timeout` s, then SIGKILL whatever of its session is left."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL if kill else signal.SIGTERM)
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=timeout)
        except ProcessLookupError:
            process.wait(timeout=timeout)
    # Children that outlived their parent (same session id as the leader's pid).
    stop_named_session(process.pid, timeout, kill=True)
    STARTED.pop(process.pid, None)


#: Session fixtures too costly to start in every xdist worker, each with the group of the tests
#: that use it (directly or through another fixture, so a new test follows without a mark): a
#: group runs in one worker (`--dist loadgroup`, see pyproject.toml), the other tests are spread.
#: Prefect's test server (`prefect_api_url`) is shared by every worker instead (one per run).
ONE_WORKER = {"prefect_server": "prefect-server", "race_api": "races"}

#: The tests on a real `prefect server start` are the longest chain of the suite, so they are two
#: groups, each with a Prefect server, live API and worker of its own (tests/deploy/conftest.py),
#: that two of the xdist workers run side by side: the modules named here, the others "prefect-server".
#: Balanced by their measured time (each half about 450 s at a load average of 8).
PREFECT_SERVER_GROUPS = {
    "test_browser": "prefect-server-2",
    "test_fanout": "prefect-server-2",
    "test_serve": "prefect-server-2",
    "test_sharding": "prefect-server-2",
}


def prefect_server_group(module: str) -> str:
    """The group (and Prefect server) of the tests of module `module` (a dotted name)."""
    return PREFECT_SERVER_GROUPS.get(module.rsplit(".", 1)[-1], ONE_WORKER["prefect_server"])


#: Fixtures that make a test `slow` (left out of the edit loop, `-m "not slow"`), used directly or
#: through another fixture: each starts a real server or process - a uvicorn API (`live_api`,
#: `api_server`, `deploy_api`), a Prefect server (the test harness or `prefect server start`), a
#: worker, PostgreSQL, the race servers. A test marked `e2e` is slow too. Tests slow for another
#: reason (fuzzing, an outage waited out, the load test, librosa) carry the mark themselves.
SLOW_FIXTURES = frozenset(
    {
        "live_api",
        "api_server",
        "deploy_api",
        "prefect_api_url",
        "prefect_server",
        "worker",
        "pg_server",
        "race_api",
    }
)


def is_slow(item: pytest.Item) -> bool:
    """Whether the edit loop leaves `item` out: marked `slow` or `e2e`, or it uses (directly or
    through another fixture) one of `SLOW_FIXTURES`."""
    if item.get_closest_marker("slow") or item.get_closest_marker("e2e"):
        return True
    return not SLOW_FIXTURES.isdisjoint(getattr(item, "fixturenames", ()))


def one_worker_group(item: pytest.Item) -> str | None:
    """The `ONE_WORKER` group of a test, from the fixtures it uses (None: any worker)."""
    names = getattr(item, "fixturenames", ())
    group = next((group for fixture, group in ONE_WORKER.items() if fixture in names), None)
    if group == ONE_WORKER["prefect_server"]:
        return prefect_server_group(item.module.__name__)  # type: ignore[attr-defined]
    return group


def first_the_longest(items: list[pytest.Item]) -> None:
    """Order the tests (in place) longest first, as far as known: the Prefect-server groups;
    then by the test's own `timeout` mark, longest first (a test that waits out a two-minute
    outage must not start last); then the other xdist groups (races, the media corpus), the
    other `slow` tests, and the rest, each in collection order. `--dist loadgroup` (without
    its reorder, see pyproject.toml) hands the first group to one worker and the second to
    the other; a worker takes more only when nearly done, and the many short tests at the end
    even out the workers."""

    def rank(item: pytest.Item) -> tuple[int, float, int]:
        if (one_worker_group(item) or "").startswith("prefect-server"):
            return (0, 0, 0)
        mark = item.get_closest_marker("timeout")
        own = float(mark.args[0]) if mark and mark.args else 0.0
        if xdist_groups(item):
            return (1, -own, 1)
        return (1, -own, 2 if item.get_closest_marker("slow") else 3)

    items.sort(key=rank)


def xdist_groups(item: pytest.Item) -> str:
    """The suffix pytest-xdist's loadgroup gives a test's id: its xdist_group names joined."""
    names = {
        str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
        for mark in item.iter_markers("xdist_group")
    }
    return "_".join(sorted(names))


def check_node_ids(items: list[pytest.Item], loadgroup: bool) -> None:
    """Refuse a collection that xdist would run wrongly, instead of letting it run part of
    the tests in silence:
    - two tests with one node id: xdist's loadgroup scheduler keys its queue by node id and
      runs one of them (under pytest 9.2, schemathesis' 27 per-operation tests shared one id,
      and 26 of them never ran; `--deselect` and `--lf` cannot tell them apart either);
    - under `--dist loadgroup`, a grouped test whose id lacks the `@group` suffix that keeps
      the group on one worker (pytest 9.2 also ignored the id xdist sets,
      pytest-xdist#1386: both workers started a Prefect server).

    pyproject.toml pins pytest below 9.2 for both."""
    repeated = sorted(nodeid for nodeid, n in Counter(i.nodeid for i in items).items() if n > 1)
    if repeated:
        raise pytest.UsageError(
            f"{len(repeated)} node id(s) shared by several tests (xdist runs one test of each): "
            + ", ".join(repeated[:5])
        )
    if not loadgroup:
        return
    for item in items:
        suffix = xdist_groups(item)
        if suffix and not item.nodeid.endswith(f"@{suffix}"):
            raise pytest.UsageError(
                f"--dist loadgroup: xdist_group {suffix!r} of {item.nodeid} did not reach its "
                "id; this pytest/pytest-xdist pair cannot keep a group on one worker"
            )


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> Iterator[None]:
    # Before every other implementation (xdist's reads the groups): mark the tests.
    for item in items:
        if is_slow(item) and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)
        if group := one_worker_group(item):
            item.add_marker(pytest.mark.xdist_group(group))
    yield
    # After them (-k and -m have deselected; xdist has added the groups to the ids).
    loadgroup = bool(getattr(config.option, "loadgroup", False))
    if loadgroup:  # an xdist worker of a loadgroup run
        first_the_longest(items)
    check_node_ids(items, loadgroup)


#: The id of the last test (in run order) of each `ONE_WORKER` group: what the group shares
#: can be stopped once it is done (tests/deploy/conftest.py), not only when the session ends.
LAST_OF_GROUP: dict[str, str] = {}


def pytest_collection_finish(session: pytest.Session) -> None:
    """Note the last test of each group in the final order (after every plugin has reordered,
    `--ff` and `--nf` included)."""
    LAST_OF_GROUP.clear()
    for item in session.items:
        if group := one_worker_group(item):
            LAST_OF_GROUP[group] = item.nodeid


#: Leftover reports of the xdist workers, collected by the controller (`pytest_testnodedown`).
WORKER_LEFTOVERS: list[str] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run loudly if a process a test started is still alive, and kill it.

    Under pytest-xdist each worker checks what it started itself and hands its report to the
    controller (a worker's own exit status is not what the run returns), which prints
    them all and fails the run."""
    leftovers = {
        leader: (what, members)
        for leader, what in STARTED.items()
        if (members := session_members(leader))
    }
    STARTED.clear()
    for members in (members for _, members in leftovers.values()):
        for pid in members:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    found = [
        f"  {what} (session {leader}): pids {members}"
        for leader, (what, members) in leftovers.items()
    ]
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker
        workeroutput["leftovers"] = found
        return
    found += WORKER_LEFTOVERS
    try:  # the run's Prefect test server outlives the worker that started it: stop it now
        if RUN_ROOT in session.config.stash:
            stop_prefect_harness(session.config.stash[RUN_ROOT])
    except RuntimeError as exc:
        found.append(f"  the Prefect test server: {exc}")
    if not found:
        return
    message = "processes started by the tests were still running; killed them:\n" + "\n".join(found)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_sep("!", "LEFTOVER PROCESSES", red=True, bold=True)
        reporter.write_line(message)
    else:
        print(message, file=sys.stderr)
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """xdist controller: collect what a finished worker found still running."""
    output = getattr(node, "workeroutput", None) or {}
    WORKER_LEFTOVERS.extend(f"{line} [{node.gateway.id}]" for line in output.get("leftovers", []))


@pytest.fixture(autouse=True)
def root_log_level() -> Iterator[None]:
    """Put the root logger's level back after each test: an in-process app sets it
    (`api.logging.configure_logging`), and a later test's caplog would then see every INFO
    line of httpx, depending on which tests an xdist worker happened to run before it."""
    root = logging.getLogger()
    level = root.level
    yield
    root.setLevel(level)


def postgres_database(server_url: str, prefix: str = "backfill_test") -> Iterator[str]:
    """A fresh database on the given server (named `prefix`_<random>), dropped afterwards."""
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(server_url)
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
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
        gen = postgres_database(server)
        url = next(gen)
        upgrade(url)
        yield url
        gen.close()
    else:
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'backfill.db'}"
        upgrade(url)
        yield url


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
    from api.services.tokens import create_token, revoke_token

    empty_tables(database_url)
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


@pytest.fixture(scope="session")
def session_app(database_url: str):  # type: ignore[no-untyped-def]
    """The app over the session's database, made once: its first request builds every route's
    dependencies (FastAPI does it lazily), about 0.15 s that a new app per test paid again.
    It reads BACKFILL_* once, at its first use: a test that sets them makes an app of its
    own from `app_settings`."""
    from api.core.config import Settings
    from api.main import create_app

    return create_app(Settings(DATABASE_URL=database_url))


@pytest.fixture
def client(clean_db: Tokens, session_app) -> Iterator[httpx.Client]:  # type: ignore[no-untyped-def]
    """The app in-process (TestClient, its lifespan run per test) with the admin token preset."""
    from fastapi.testclient import TestClient

    with TestClient(session_app, base_url="http://testserver/api/v1") as c:
        c.headers.update(clean_db.header("admin"))
        yield c


@pytest.fixture
def tokens(clean_db: Tokens) -> Tokens:
    return clean_db


def ephemeral_ports() -> tuple[int, int]:
    """The range the kernel takes ports from for `bind(0)` and for outgoing connections."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port() -> int:
    """A free port on 127.0.0.1 for a server a test starts, from below the kernel's ephemeral
    range. A port `bind(0)` gave back is in that range, and any outgoing connection (the
    tests make thousands) may take it as its source port before the server binds it: a
    Prefect server once failed to start with "Port ... is already in use"."""
    top = ephemeral_ports()[0]
    rng = random.SystemRandom()
    while True:
        port = rng.randrange(max(1024, top - 12000), top)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


class PortTaken(RuntimeError):
    """A server exited because its port was taken between `free_port` and its own bind."""


#: How many ports a server's first start tries (`on_a_free_port`).
PORT_ATTEMPTS = 5


def on_a_free_port(start: Callable[[int], T], port: int) -> T:
    """`start(port)`, a server listening on `port`; if the port was taken meanwhile (by a
    process of this machine we do not know of, or another worker's server), `start` again on
    another. CI once lost a Prefect server, and the five tests of its group, to "Port 20899
    is already in use". Only for a first start: a restart keeps its port, as the clients of
    the server hold its URL."""
    for _ in range(PORT_ATTEMPTS - 1):
        try:
            return start(port)
        except PortTaken:
            port = free_port()
    return start(port)


def log_tail(path: Path | None, lines: int = 30) -> str:
    """The last lines of a server log, for an error message."""
    if path is None or not path.is_file():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def wait_healthy(
    process: subprocess.Popen[Any],
    url: str,
    timeout: float | None = None,
    log_path: Path | None = None,
    *,
    health: str = "/api/v1/health",
    what: str = "API",
) -> None:
    """Wait until the server `what` at `url` answers 200 on `health` (our API's, by default),
    on a deadline of `timeout` s (default `server_timeout()`); raise at once if `process`
    exits."""
    timeout = server_timeout() if timeout is None else timeout
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_tail(log_path)
            # What `prefect server start` and uvicorn print when their port is taken (a log
            # also holds the lines of earlier starts, on other ports).
            taken = rf"\b{httpx.URL(url).port}\b.*already in use"
            error = PortTaken if re.search(taken, tail, re.IGNORECASE) else RuntimeError
            raise error(f"{what} exited with {process.returncode}; {log_path}:\n{tail}")
        try:
            answer = httpx.get(f"{url}{health}", timeout=2)
            if answer.status_code == 200:
                return
            last = f"{answer.status_code} {answer.text[:200]}"
        except httpx.TransportError as exc:
            last = repr(exc)
        time.sleep(0.1)
    raise RuntimeError(
        f"{what} did not become healthy in {timeout:.0f} s (BACKFILL_TEST_SERVER_TIMEOUT); "
        f"last answer: {last}; {log_path}:\n{log_tail(log_path)}"
    )


@dataclass
class LiveApi:
    """A real uvicorn process on 127.0.0.1 over a migrated database of its own."""

    database_url: str
    admin_token: str
    reader_token: str
    port: int = field(default_factory=free_port)
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    #: Every uvicorn this object started (the leader of a session of its own each).
    pids: list[int] = field(default_factory=list)
    #: Whether it has answered once: from then on it starts on the same port (a restart).
    served: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float | None = None) -> None:
        """Start the server and wait until it answers (on a deadline of `server_timeout()` s);
        on any failure it is stopped before raising. A first start takes another port if its
        own was taken (`on_a_free_port`); a restart keeps it."""
        if self.served:
            self._start(self.port, timeout)
        else:
            on_a_free_port(lambda port: self._start(port, timeout), self.port)
        self.served = True

    def _start(self, port: int, timeout: float | None) -> None:
        """Start uvicorn on `port` and wait for `/health` to answer 200; on any failure the
        process group is killed before raising."""
        self.port = port
        env = os.environ | {"BACKFILL_DATABASE_URL": self.database_url}
        with open(self.log_path or os.devnull, "ab") as log:
            self.process = spawn(
                f"uvicorn api.main:app on port {self.port}",
                uvicorn_command(self.port, "--no-access-log"),
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=log,
            )
        self.pids.append(self.process.pid)
        try:
            self._wait_healthy(server_timeout() if timeout is None else timeout)
        except BaseException:
            self.stop(kill=True)
            raise

    def _wait_healthy(self, timeout: float) -> None:
        assert self.process is not None
        wait_healthy(self.process, self.url, timeout, self.log_path)

    def stop(self, *, kill: bool = False) -> None:
        if self.process is not None:
            stop_group(self.process, timeout=15, kill=kill)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


class InThreadApi(LiveApi):
    """The same app and the same real uvicorn on 127.0.0.1, served from a thread of the test
    process instead of a child process: no interpreter start and no second import of the app
    (about 2 s of CPU a test). It reads BACKFILL_* when it starts, as the process would; for
    what only a process can do (SIGKILL, a leak check) use `LiveApi`."""

    server: Any = None
    thread: threading.Thread | None = None
    listener: socket.socket | None = None

    def _start(self, port: int, timeout: float | None) -> None:
        import uvicorn

        self.port = port

        from api.core.config import Settings
        from api.main import create_app

        app = create_app(Settings(DATABASE_URL=self.database_url))
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=5,
        )
        server = uvicorn.Server(config)
        # Bound here, so that a taken port is known for sure (uvicorn would only log it).
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            listener.bind(("127.0.0.1", self.port))
        except OSError as exc:
            listener.close()
            raise PortTaken(f"port {self.port}: {exc}") from exc
        thread = threading.Thread(
            target=server.run, args=([listener],), name=f"uvicorn:{self.port}", daemon=True
        )
        self.server, self.thread, self.listener = server, thread, listener
        thread.start()
        timeout = server_timeout() if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive():
                self.stop()
                raise RuntimeError(f"uvicorn on port {self.port} did not start")
            if time.monotonic() > deadline:
                self.stop(kill=True)
                raise RuntimeError(
                    f"uvicorn did not start in {timeout:.0f} s (BACKFILL_TEST_SERVER_TIMEOUT)"
                )
            time.sleep(0.01)

    def stop(self, *, kill: bool = False) -> None:
        if self.server is not None and self.thread is not None:
            self.server.should_exit = True
            self.server.force_exit = kill
            self.thread.join(timeout=30)
            if self.thread.is_alive():
                raise RuntimeError(f"uvicorn on port {self.port} did not stop in 30 s")
        if self.listener is not None:
            self.listener.close()  # uvicorn closes it too, once it got as far as serving
        self.server = self.thread = self.listener = None


def migrated_live_api(folder: Path, db_name: str, admin: str = "admin") -> LiveApi:
    """A `LiveApi`, not started, over a new migrated SQLite file `db_name` in `folder`, with
    an admin token named `admin` and a reader token; it logs to folder/api.log."""
    return live_api_over(f"sqlite:///{folder / db_name}", folder, admin)


def live_api_over(url: str, folder: Path, admin: str = "admin") -> LiveApi:
    """A `LiveApi`, not started, over database `url` (migrated here), with an admin token
    named `admin` and a reader token; it logs to folder/api.log."""
    from api.migrate import upgrade
    from api.services.tokens import create_token

    upgrade(url)
    admin_token, reader_token = (
        create_token(name=name, role=role, database_url=url)
        for name, role in ((admin, "admin"), ("reader", "reader"))
    )
    return LiveApi(url, admin_token, reader_token, log_path=folder / "api.log")


@pytest.fixture
def live_api(tmp_path: Path) -> Iterator[LiveApi]:
    """A fresh SQLite database, migrated, with admin and reader tokens, served by uvicorn
    (in a thread of this process: `InThreadApi`).

    One per test, not per session: a flow run some test leaves behind in a thread must not
    write into the next test's database (seen with a shared server under xdist)."""
    made = migrated_live_api(tmp_path, "live.db")
    api = InThreadApi(made.database_url, made.admin_token, made.reader_token)
    api.start()
    try:
        yield api
    finally:
        api.stop()
        from api.core.db import engine_for

        engine_for(api.database_url).dispose()


#: The folder of the whole run (`run_root`), made by the controller (or the only process).
RUN_ROOT = pytest.StashKey[Path]()
#: The run's reaper (tests/reaper.py), started with the run folder.
REAPER = pytest.StashKey[subprocess.Popen[bytes]]()

#: Where `prefect_api_url` records the run's one Prefect test server (its URL and pid).
HARNESS_RECORD = "prefect-harness.json"

#: The Prefect home every Prefect server of the run starts from a copy of (`seed_prefect_home`).
TEMPLATE = "prefect-template"


def pytest_configure(config: pytest.Config) -> None:
    global SESSIONS
    # pytest keeps the test modules and conftests it rewrites (asserts) unless
    # PYTHONDONTWRITEBYTECODE is set: then each worker rewrote and compiled all 80 again,
    # about 2 s of CPU. (This conftest, imported before, is rewritten each time: 0.02 s.)
    sys.dont_write_bytecode = False
    if not hasattr(config, "workerinput"):  # the xdist controller, or a run without xdist
        compile_project()
        root = config.stash[RUN_ROOT] = Path(tempfile.mkdtemp(prefix="backfill-tests-"))
        (root / "sessions").mkdir()
        (root / "workers").mkdir()
        config.stash[REAPER] = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("reaper.py")), str(os.getpid()), root],
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    else:
        (run_root(config) / "workers" / str(os.getpid())).touch()
    SESSIONS = run_root(config) / "sessions"


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist controller: tell each worker the run's folder."""
    node.workerinput["backfill_run_root"] = str(node.config.stash[RUN_ROOT])


def run_root(config: pytest.Config) -> Path:
    """A folder shared by every xdist worker of the run, removed when the run ends: what
    they share (the Prefect database template, the Prefect test server) lives there."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        return Path(workerinput["backfill_run_root"])
    return config.stash[RUN_ROOT]


def pytest_unconfigure(config: pytest.Config) -> None:
    if REAPER in config.stash:  # the run ends here, having stopped what it started
        config.stash[REAPER].kill()
        config.stash[REAPER].wait()
    if RUN_ROOT in config.stash:
        shutil.rmtree(config.stash[RUN_ROOT], ignore_errors=True)


@contextmanager
def run_lock(root: Path, name: str) -> Iterator[None]:
    """An exclusive lock, across the xdist workers of a run, on `name` in `root`."""
    with (root / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


#: What of a Prefect home a new server starts from: its database, migrated, and Prefect's memo
#: that the block types are registered in it. Without them a start costs about 11 s more of
#: CPU (the migrations of a new database), or 2 s more (the block registration).
PREFECT_DB, PREFECT_MEMO = "prefect.db", "memo_store.toml"
PREFECT_HOME_FILES = (PREFECT_DB, PREFECT_MEMO)


def seed_prefect_home(source: Path, home: Path) -> None:
    """Start Prefect home `home` (a server's PREFECT_HOME, new) from the files of `source`
    that exist (`PREFECT_HOME_FILES`); an existing database of `home` is kept."""
    home.mkdir(parents=True, exist_ok=True)
    if (source / PREFECT_DB).is_file() and not (home / PREFECT_DB).exists():
        copy_sqlite(source / PREFECT_DB, home / PREFECT_DB)
    if (source / PREFECT_MEMO).is_file():
        shutil.copyfile(source / PREFECT_MEMO, home / PREFECT_MEMO)


def cached_prefect_home(config: pytest.Config) -> Path | None:
    """The Prefect home this Prefect version's first test server left in pytest's cache
    (.pytest_cache), for the next run's to start from; None without a cache (`-p
    no:cacheprovider`)."""
    cache = getattr(config, "cache", None)
    if cache is None:
        return None
    from prefect import __version__

    try:
        return Path(cache.mkdir(f"prefect-home-{__version__}"))
    except OSError:  # a read-only checkout: every run migrates its own, as without a cache
        return None


def store_prefect_home(source: Path, cached: Path) -> None:
    """Keep the files of Prefect home `source` in `cached`, each replaced at once, so that a
    run reading it meanwhile (another pytest) sees a whole file or none. A cache that cannot
    be written (a full disk) is a warning: the run goes on without it."""
    try:
        for name in PREFECT_HOME_FILES:
            if (source / name).is_file():
                part = cached / f".{name}.{os.getpid()}.part"
                if name == PREFECT_DB:
                    copy_sqlite(source / name, part)
                else:
                    shutil.copyfile(source / name, part)
                os.replace(part, cached / name)
    except (OSError, sqlite3.Error) as exc:
        shutil.rmtree(cached, ignore_errors=True)
        warnings.warn(f"the Prefect home was not kept in pytest's cache: {exc}", stacklevel=1)


def copy_sqlite(source: Path, target: Path) -> None:
    """A consistent copy of SQLite file `source` at `target` (the backup API, WAL or not)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    src, dst = sqlite3.connect(source), sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


def prefect_env(home: Path, **extra: str) -> dict[str, str]:
    """This environment without PREFECT_*, BACKFILL_* and database URLs, with PREFECT_HOME
    `home` and no analytics: what a Prefect server or CLI of the tests runs with."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "BACKFILL_")) and "DATABASE" not in k
    }
    return env | {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"} | extra


#: The Prefect servers of the run, with SQLite lock waits of seconds: the test server, and
#: Prefect's CLI for the deployment groups' `prefect server start`.
PREFECT_TEST_SERVER = Path(__file__).with_name("prefect_test_server.py")


def start_prefect_harness(folder: Path, record: Path) -> dict[str, Any]:
    """Start the server `prefect_test_harness` starts (Prefect's API in ephemeral mode: no UI,
    only the services an ephemeral server runs, less the two for events) over the database in
    `folder` (a new one, or one `seed_prefect_home` put there), in a session
    of its own that the run's reaper stops if the run is killed (`name_session`; the run's
    end stops it otherwise, `stop_prefect_harness`); its pid goes into `record` at once, its
    URL once its /health answers (on the deadline of `prefect_server_timeout()`). On any
    failure, an interrupt included, it is stopped."""
    folder.mkdir(parents=True, exist_ok=True)
    database = folder / PREFECT_DB
    env = prefect_env(
        folder,
        PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{database}",
        PREFECT_UI_ENABLED="0",
        # What prefect.server.api.server.SubprocessASGIServer (the harness's server) sets.
        PREFECT__SERVER_EPHEMERAL="1",
        PREFECT__SERVER_FINAL="1",
        # No test reads the Prefect events of its flows (only their task runs, which the
        # task-run recorder writes), so none are stored or matched against automations:
        # about 8 % of this server's CPU (docs/testing.md, eighth look).
        PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED="false",
        PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED="false",
    )
    log_path = folder / "server.log"

    def start(port: int) -> dict[str, Any]:
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, str(PREFECT_TEST_SERVER), str(port)],
                start_new_session=True,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        # Not `spawn`: it outlives the worker that starts it, whose leak check would stop it.
        name_session(process.pid, "the Prefect test server")
        started: dict[str, Any] = {"pid": process.pid}
        record.write_text(json.dumps(started))  # from now on the run's end stops it
        url = f"http://127.0.0.1:{port}/api"
        try:
            wait_healthy(
                process,
                url,
                prefect_server_timeout(),
                log_path,
                health="/health",
                what="the Prefect test server",
            )
        except BaseException:
            stop_named_session(process.pid)
            raise
        return started | {"url": url}

    return on_a_free_port(start, free_port())


def stop_prefect_harness(root: Path) -> None:
    """Stop the run's Prefect test server, if one was started (the run is over: no worker
    uses it any more)."""
    record = root / HARNESS_RECORD
    if record.is_file():
        pid = json.loads(record.read_text()).get("pid")
        if pid is not None:
            stop_named_session(pid)
        record.unlink()


def shared_prefect_server(config: pytest.Config) -> dict[str, Any]:
    """The run's one Prefect test server (its URL and pid), started by the first xdist worker
    to ask (the others wait on a lock and find it in the run's folder); it outlives that
    worker, and the run stops it at its very end (`pytest_sessionfinish` of the controller).

    Right after it answers (its database migrated), a copy of its home is kept as the
    template every other Prefect server of the run starts from (`prefect_home_template`), and
    in pytest's cache for the next run's test server (`cached_prefect_home`; the cache is per
    Prefect version, and dropped if a start from it fails): a new database costs about 11 s
    of CPU a server to migrate."""
    root = run_root(config)
    record = root / HARNESS_RECORD
    with run_lock(root, "prefect-harness"):
        if not record.is_file():
            folder = root / "prefect-harness"
            cached = cached_prefect_home(config)
            try:
                if cached is not None:
                    seed_prefect_home(cached, folder)
                started = start_prefect_harness(folder, record)
                seed_prefect_home(folder, root / TEMPLATE)
                if cached is not None and not (cached / PREFECT_DB).is_file():
                    store_prefect_home(root / TEMPLATE, cached)
            except Exception as exc:
                stop_prefect_harness(root)  # one that answered, but could not be copied
                if cached is not None:  # whatever it was, the next run starts from scratch
                    shutil.rmtree(cached, ignore_errors=True)
                # The next worker to ask fails at once instead of waiting out the deadline again.
                record.write_text(json.dumps({"error": str(exc)}))
                raise
            record.write_text(json.dumps(started))
        shared = dict(json.loads(record.read_text()))
    if "error" in shared:
        pytest.fail(f"the run's Prefect test server could not be started: {shared['error']}")
    return shared


@pytest.fixture(scope="session")
def prefect_home_template(request: pytest.FixtureRequest) -> Path:
    """A Prefect home to start a server from (`seed_prefect_home`; see `shared_prefect_server`).
    The demo's test starts from a new one: that is what a user's first run does."""
    shared_prefect_server(request.config)
    return run_root(request.config) / TEMPLATE


@pytest.fixture(scope="session")
def prefect_api_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The API URL of the run's Prefect test server (`shared_prefect_server`: one for the
    whole run, however many xdist workers; one per worker cost each a start, about 5 s of CPU,
    and its idle loops), set as PREFECT_API_URL for the session."""
    url = str(shared_prefect_server(request.config)["url"])
    from prefect.context import _temporary_global_settings_context, get_settings_context
    from prefect.settings import PREFECT_API_URL, temporary_settings

    no_heartbeats = {"flows.heartbeat_frequency": None}  # joining their thread: ~1 s a run
    # The flows' logs stay on the console (pytest shows them with a failure); sending every
    # line to the shared server cost ~10 s of CPU over tests/flows, and no test reads them.
    console_logs = {"logging.to_api.enabled": False}
    with (
        temporary_settings(updates={PREFECT_API_URL: url, **no_heartbeats, **console_logs}),
        # Threads a test starts read the process-wide settings, not this context's: set both
        # (what prefect_test_harness does).
        _temporary_global_settings_context(get_settings_context()),
    ):
        yield url
        drain_prefect_queues()


def drain_prefect_queues() -> None:
    """Send what this process still queues for the Prefect server (logs, events) while the
    server is up, as `prefect_test_harness` does before stopping its server."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    try:
        APILogWorker.instance().drain()
    except RuntimeError:  # never started in this process
        pass
    EventsWorker.drain_all()


@pytest.fixture
def media_root(tmp_path: Path) -> Path:
    root = tmp_path / "media"
    root.mkdir()
    return root
