"""The server fixtures stop what they start, even when the server never comes up."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    ROOT,
    STARTED,
    LiveApi,
    ephemeral_ports,
    free_port,
    server_timeout,
    session_members,
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


@pytest.mark.slow  # a whole pytest session in a subprocess, twice
@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_a_server_left_running_fails_the_session_and_is_killed(
    tmp_path: Path, workers: list[str]
) -> None:
    # Under xdist the leak happens in a worker; the controller must still fail the run.
    (tmp_path / "conftest.py").write_text(
        "from tests.conftest import pytest_sessionfinish, pytest_testnodedown  # noqa: F401\n"
    )
    (tmp_path / "test_leak.py").write_text(
        "import pathlib\n"
        "from tests.conftest import spawn\n\n"
        "def test_leaks():\n"
        "    process = spawn('a forgotten server', ['sleep', '600'])\n"
        "    pathlib.Path('pid').write_text(str(process.pid))\n"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-c",
            "/dev/null",
            *workers,
            ".",
        ],
        cwd=tmp_path,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=server_timeout(),
    )
    # The test passed, yet the session fails, says what it killed, and killed it.
    assert "1 passed" in done.stdout, done.stdout
    assert done.returncode == pytest.ExitCode.TESTS_FAILED, done.stdout
    assert "LEFTOVER PROCESSES" in done.stdout
    assert "a forgotten server (session " in done.stdout
    pid = int((tmp_path / "pid").read_text())
    assert session_members(pid) == []


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
