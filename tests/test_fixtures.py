"""The server fixtures stop what they start, even when the server never comes up."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from tests.conftest import (
    HARNESS_RECORD,
    ROOT,
    STARTED,
    InThreadApi,
    LiveApi,
    PortTaken,
    ephemeral_ports,
    free_port,
    prefect_env,
    run_root,
    seed_prefect_home,
    server_timeout,
    session_members,
    spawn,
    stop_group,
    stop_sessions,
    store_prefect_home,
    wait_healthy,
)


def test_free_ports_are_below_the_kernels_ephemeral_range_and_bindable() -> None:
    """No outgoing connection can take a server's port as its source port meanwhile."""
    low, _ = ephemeral_ports()
    ports = [free_port() for _ in range(50)]
    assert all(1024 <= port < low for port in ports)
    assert len(set(ports)) > 40  # spread out: two xdist workers rarely pick the same one
    for port in ports[:5]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port of 127.0.0.1 another process might hold: bound and listening, here."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def migrated(tmp_path: Path) -> str:
    from api.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'api.db'}"
    upgrade(url)
    return url


def test_an_api_whose_port_was_taken_starts_on_another(tmp_path: Path, taken_port: int) -> None:
    api = InThreadApi(migrated(tmp_path), admin_token="-", reader_token="-", port=taken_port)
    api.start()
    try:
        assert api.port != taken_port
        assert httpx.get(f"{api.url}/api/v1/health", timeout=10).status_code == 200
    finally:
        api.stop()


def test_a_restarted_api_keeps_its_port_or_fails(tmp_path: Path) -> None:
    """Its clients hold its URL: a restart on another port would leave them talking to none."""
    api = InThreadApi(migrated(tmp_path), admin_token="-", reader_token="-")
    api.start()
    port = api.port
    api.stop()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        with pytest.raises(PortTaken, match=str(port)):
            api.start()
    api.start()
    try:
        assert api.port == port
        assert httpx.get(f"{api.url}/api/v1/health", timeout=10).status_code == 200
    finally:
        api.stop()


@pytest.mark.slow  # two real uvicorn processes: one that fails to bind, one that serves
def test_an_api_process_whose_port_was_taken_starts_on_another(
    tmp_path: Path, taken_port: int
) -> None:
    log_path = tmp_path / "api.log"
    api = LiveApi(migrated(tmp_path), "-", "-", port=taken_port, log_path=log_path)
    api.start()
    try:
        assert api.port != taken_port and len(api.pids) == 2
        assert re.search(rf"{taken_port}\b.*already in use", log_path.read_text())
        assert httpx.get(f"{api.url}/api/v1/health", timeout=10).status_code == 200
    finally:
        api.stop()


@pytest.mark.slow  # the Prefect CLI's import
def test_a_prefect_server_on_a_taken_port_is_known_as_such(tmp_path: Path, taken_port: int) -> None:
    """What `prefect server start` prints then is what `wait_healthy` looks for."""
    log_path = tmp_path / "server.log"
    with log_path.open("ab") as log:
        process = spawn(
            "prefect server start",
            [sys.executable, "-m", "prefect", "server", "start", "--port", str(taken_port)],
            env=prefect_env(tmp_path),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        with pytest.raises(PortTaken):
            wait_healthy(process, f"http://127.0.0.1:{taken_port}/api", log_path=log_path)
    finally:
        stop_group(process)


@pytest.mark.slow  # a real uvicorn process, up to its 3 s deadline
def test_an_api_that_never_becomes_healthy_is_still_killed(tmp_path: Path) -> None:
    # uvicorn starts, but /health could only answer 503: its database is unreachable.
    unreachable = "postgresql+psycopg://nobody:secret@127.0.0.1:9/none?connect_timeout=1"
    api = LiveApi(unreachable, admin_token="-", reader_token="-", log_path=tmp_path / "api.log")
    # The deadline comes while the process is alive: start() kills its group, then raises.
    with pytest.raises(RuntimeError, match="did not become healthy in 3 s"):
        api.start(timeout=3)
    (leader,) = api.pids
    assert api.process is None
    assert session_members(leader) == []
    assert leader not in STARTED
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{api.url}/api/v1/health", timeout=2)


@pytest.mark.slow  # a real uvicorn process
def test_an_api_that_exits_at_once_leaves_nothing(tmp_path: Path) -> None:
    api = LiveApi("nonsense://", admin_token="-", reader_token="-", log_path=tmp_path / "api.log")
    with pytest.raises(RuntimeError, match="API exited with"):
        api.start()
    (leader,) = api.pids
    assert session_members(leader) == [] and leader not in STARTED


def inner_session(
    folder: Path, hooks: str, test: str, workers: list[str], conftest: str = ""
) -> dict[str, Any]:
    """Popen arguments of a pytest session in `folder` over one test file `test`, with the
    hooks `hooks` of tests/conftest.py (and the code `conftest` after them), and only the
    plugins it needs (not schemathesis', hypothesis', Playwright's, ...)."""
    (folder / "conftest.py").write_text(
        f"from tests.conftest import {hooks}  # noqa: F401\n{conftest}"
    )
    (folder / "test_inner.py").write_text(test)
    return {
        "args": [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-c", "/dev/null"]
        + [*workers, "."],
        "cwd": folder,
        # Not this xdist worker's PYTEST_XDIST_*: the inner session has workers of its own, or none.
        "env": {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
        | {"PYTHONPATH": str(ROOT), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
    }


#: Two tests of one node id, as schemathesis' per-operation tests were under pytest 9.2.
TWINS = """
import pytest

class Twin(pytest.Item):
    def runtest(self):
        pass

class Twins(pytest.File):
    def collect(self):
        return [Twin.from_parent(self, name="twin"), Twin.from_parent(self, name="twin")]

def pytest_collect_file(file_path, parent):
    if file_path.suffix == ".twins":
        return Twins.from_parent(parent, path=file_path)
"""


@pytest.mark.slow  # a whole pytest session in a subprocess
def test_a_collection_with_two_tests_of_one_node_id_is_refused(tmp_path: Path) -> None:
    """xdist would run one of them (its loadgroup queue is keyed by node id): the session
    stops at collection (`check_node_ids`) instead of running part of the tests."""
    (tmp_path / "a.twins").write_text("")
    session = inner_session(
        tmp_path, "pytest_collection_modifyitems", "def test_one():\n    pass\n", [], TWINS
    )
    done = subprocess.run(**session, capture_output=True, text=True, timeout=server_timeout())
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout + done.stderr
    assert "1 node id(s) shared by several tests" in done.stderr, done.stderr
    assert "a.twins::twin" in done.stderr and "passed" not in done.stdout


@pytest.mark.slow  # a whole pytest session in a subprocess, twice
@pytest.mark.parametrize("workers", [[], ["-p", "xdist", "-n", "2"]], ids=["serial", "xdist"])
def test_a_server_left_running_fails_the_session_and_is_killed(
    tmp_path: Path, workers: list[str]
) -> None:
    # Under xdist the leak happens in a worker; the controller must still fail the run.
    session = inner_session(
        tmp_path,
        "pytest_sessionfinish, pytest_testnodedown",
        "import pathlib\n"
        "from tests.conftest import spawn\n\n"
        "def test_leaks():\n"
        "    process = spawn('a forgotten server', ['sleep', '600'])\n"
        "    pathlib.Path('pid').write_text(str(process.pid))\n",
        workers,
    )
    done = subprocess.run(**session, capture_output=True, text=True, timeout=server_timeout())
    # The test passed, yet the session fails, says what it killed, and killed it.
    assert "1 passed" in done.stdout, done.stdout
    assert done.returncode == pytest.ExitCode.TESTS_FAILED, done.stdout
    assert "LEFTOVER PROCESSES" in done.stdout
    assert "a forgotten server (session " in done.stdout
    pid = int((tmp_path / "pid").read_text())
    assert session_members(pid) == []


@pytest.mark.slow  # a pytest session in a subprocess
@pytest.mark.parametrize("workers", [[], ["-p", "xdist", "-n", "1"]], ids=["serial", "xdist"])
def test_a_killed_run_still_stops_the_servers_it_started(
    tmp_path: Path, workers: list[str]
) -> None:
    """SIGKILL leaves pytest no time to stop anything: the run's reaper does it."""
    session = inner_session(
        tmp_path,
        "pytest_configure, pytest_configure_node, pytest_unconfigure",
        "import os, pathlib, signal, time\n"
        "from tests.conftest import spawn\n\n"
        "def test_killed():\n"
        "    process = spawn('a server', ['sleep', '600'])\n"
        "    pathlib.Path('pid').write_text(str(process.pid))\n"
        "    if 'PYTEST_XDIST_WORKER' in os.environ:\n"
        "        time.sleep(600)  # until the reaper kills this worker\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n",
        workers,
    )
    run = subprocess.Popen(**session, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pid_file = tmp_path / "pid"
    try:
        deadline = time.monotonic() + server_timeout()
        while not pid_file.is_file() and time.monotonic() < deadline:
            time.sleep(0.05)
        if workers:  # the controller, killed while its worker runs the test
            os.kill(run.pid, signal.SIGKILL)
        assert run.wait(timeout=server_timeout()) == -signal.SIGKILL
        server = int(pid_file.read_text())
        while session_members(server) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert session_members(server) == []
    finally:
        run.kill()
        if pid_file.is_file():
            stop_sessions([int(pid_file.read_text())], kill=True)


def test_the_reaper_counts_a_killed_unreaped_owner_as_gone() -> None:
    """A run's process killed but not yet reaped by its parent is a zombie: gone, for the reaper."""
    from tests.reaper import alive

    child = subprocess.Popen(["sleep", "600"])
    try:
        assert alive(child.pid)
        os.kill(child.pid, signal.SIGKILL)
        deadline = time.monotonic() + server_timeout()
        while alive(child.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not alive(child.pid)
        assert Path(f"/proc/{child.pid}").exists()  # a zombie: `os.kill(pid, 0)` still succeeds
    finally:
        child.kill()
        child.wait()
    assert not alive(child.pid)


def test_the_prefect_test_server_waits_seconds_for_a_sqlite_lock_not_a_minute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    from prefect.server.database.configurations import AioSqliteConfiguration

    from tests import prefect_test_server

    config = AioSqliteConfiguration(connection_url=f"sqlite+aiosqlite:///{tmp_path / 'p.db'}")

    def busy_timeout() -> int:
        connection = sqlite3.connect(tmp_path / "p.db")
        try:
            config.setup_sqlite(connection, None)  # type: ignore[arg-type]
            ((milliseconds,),) = connection.execute("PRAGMA busy_timeout").fetchall()
            return int(milliseconds)
        finally:
            connection.close()

    prefects_own = busy_timeout()
    monkeypatch.setattr(AioSqliteConfiguration, "setup_sqlite", AioSqliteConfiguration.setup_sqlite)
    prefect_test_server.shorter_lock_waits(prefect_test_server.LOCK_WAIT_MS)
    assert busy_timeout() == prefect_test_server.LOCK_WAIT_MS < prefects_own


def test_a_lock_refusal_of_a_prefect_server_loop_is_not_a_broken_loop(tmp_path: Path) -> None:
    from tests.deploy.conftest import PrefectServer

    server = PrefectServer(home=tmp_path)
    server.log_path.write_text(
        "19:12:10.901 | ERROR   | docket.dependencies - ↩ [  5444ms] mark_work_queues_ready()\n"
        "Traceback (most recent call last):\n"
        "sqlite3.OperationalError: database is locked\n"
        "19:12:11.002 | INFO    | prefect.server - fine\n"
        "19:12:12.003 | ERROR   | prefect.server.services.scheduler - Unexpected error\n"
        "Traceback (most recent call last):\n"
        "sqlalchemy.exc.InvalidRequestError: Can't evaluate bulk DML statement\n"
        "19:12:13.004 | ERROR   | prefect.server - Encountered error during state validation\n"
    )

    (broken,) = server.service_errors()
    assert "prefect.server.services.scheduler" in broken and "bulk DML" in broken
    assert len(server.errors()) == 3  # the lock refusal and the API's error are still ERRORs


@pytest.mark.usefixtures("prefect_api_url")
def test_the_runs_prefect_test_server_is_named_for_the_reaper(
    request: pytest.FixtureRequest,
) -> None:
    """It is not started by `spawn` (it outlives the worker that starts it), so it is named
    for the reaper on its own; the reaper stops what is named once the run is killed."""
    root = run_root(request.config)
    pid = json.loads((root / HARNESS_RECORD).read_text())["pid"]
    assert (root / "sessions" / str(pid)).read_text() == "the Prefect test server"
    assert pid in session_members(pid)  # alive


def test_only_the_tests_and_the_named_plugins_have_their_asserts_rewritten() -> None:
    """pyproject.toml loads the plugins it names, not every installed one: pytest would rewrite
    the asserts of every module of their packages (schemathesis, hypothesis, anyio) in each
    worker, uncached where PYTHONDONTWRITEBYTECODE is set."""
    import anyio
    import hypothesis
    import schemathesis
    from _pytest.assertion.rewrite import AssertionRewritingHook

    def rewritten(module: Any) -> bool:
        return isinstance(module.__spec__.loader, AssertionRewritingHook)

    assert rewritten(sys.modules[__name__])
    assert [m.__name__ for m in (anyio, hypothesis, schemathesis) if rewritten(m)] == []


def test_a_prefect_home_starts_from_the_template_and_keeps_its_own_database(
    tmp_path: Path,
) -> None:
    template, cached, home = tmp_path / "template", tmp_path / "cache", tmp_path / "home"
    template.mkdir()
    cached.mkdir()
    with sqlite3.connect(template / "prefect.db") as conn:
        conn.execute("CREATE TABLE migrated (revision TEXT)")
        conn.execute("INSERT INTO migrated VALUES ('head')")
    conn.close()
    (template / "memo_store.toml").write_text('block_auto_registration = "abc"\n')

    store_prefect_home(template, cached)
    assert sorted(p.name for p in cached.iterdir()) == ["memo_store.toml", "prefect.db"]
    seed_prefect_home(cached, home)
    with sqlite3.connect(home / "prefect.db") as conn:
        assert conn.execute("SELECT revision FROM migrated").fetchall() == [("head",)]
    conn.close()
    assert (home / "memo_store.toml").read_text() == 'block_auto_registration = "abc"\n'

    (home / "prefect.db").write_bytes(b"its own")  # a server's database is never replaced
    seed_prefect_home(template, home)
    assert (home / "prefect.db").read_bytes() == b"its own"


def test_a_test_server_that_fails_to_start_from_the_cached_home_drops_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tests.conftest as shared

    cached = tmp_path / "cache"
    cached.mkdir()
    (cached / "prefect.db").write_bytes(b"not a database")  # whatever made it so
    (tmp_path / "run").mkdir()

    class Cache:
        def mkdir(self, name: str) -> Path:
            return cached

    def no_server(folder: Path, record: Path) -> dict[str, Any]:
        raise AssertionError("no server is started from a database that cannot be read")

    monkeypatch.setattr(shared, "start_prefect_harness", no_server)
    config: Any = SimpleNamespace(
        cache=Cache(), workerinput={"backfill_run_root": str(tmp_path / "run")}
    )
    with pytest.raises(sqlite3.DatabaseError):
        shared.shared_prefect_server(config)
    assert not cached.exists()  # the next run migrates a new database, and caches that
    assert "error" in json.loads((tmp_path / "run" / HARNESS_RECORD).read_text())


def test_a_cache_that_cannot_be_written_is_a_warning_not_a_failure(tmp_path: Path) -> None:
    source = tmp_path / "home"
    source.mkdir()
    with sqlite3.connect(source / "prefect.db") as conn:
        conn.execute("CREATE TABLE migrated (revision TEXT)")
    conn.close()
    cached = tmp_path / "cache"
    cached.write_text("a file where the cache's folder should be")
    with pytest.warns(UserWarning, match="not kept in pytest's cache"):
        store_prefect_home(source, cached)


def test_the_environment_and_the_project_are_compiled_so_no_process_compiles_them_again() -> None:
    """Where PYTHONDONTWRITEBYTECODE is set, Python writes no .pyc files, so each of the run's
    ~150 processes compiled what it imported from source. `uv sync` (and so `uv run` on a fresh
    clone) writes the environment's (`compile-bytecode`, pyproject.toml); the run writes the
    project's (`compile_project`) and keeps the test modules pytest rewrites."""
    import importlib.util

    from _pytest.assertion.rewrite import PYC_TAIL

    def source(module: str) -> Path:  # without importing it (Prefect's server: 2 s of CPU)
        top, *rest = module.split(".")
        spec = importlib.util.find_spec(top)
        assert spec is not None and spec.origin is not None, module
        if not rest:
            return Path(spec.origin)
        path = Path(spec.origin).parent.joinpath(*rest)
        return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")

    modules = ["prefect", "prefect.cli", "prefect.server.api.server", "fastapi", "sqlalchemy"]
    modules += ["api.main", "flows.engine", "ops.cli"]
    missing = [
        m for m in modules if not Path(importlib.util.cache_from_source(str(source(m)))).is_file()
    ]
    assert missing == []
    rewritten = Path(__file__).parent / "__pycache__" / (Path(__file__).stem + PYC_TAIL)
    assert rewritten.is_file()
