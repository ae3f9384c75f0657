"""`backfill demo` on a fresh folder: it finishes, prints the coverage table and the
failures, leaves nothing running but the API it was asked to keep, and that API works."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import server_timeout, spawn
from tests.deploy.conftest import session_members

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # its own Prefect server and API

KINDS = ("media-duration", "file-hashing", "snr-frequency", "version-0", "clip-compile")

#: The demo's budget on a 2-core machine is two minutes; leave CI some slack.
DEMO_TIMEOUT = 150


#: `backfill demo`, as the README runs it (through `uv run`, which puts .venv/bin first).
DEMO = [str(Path(sys.executable).parent / "backfill"), "demo"]


def test_demo_runs_end_to_end_and_leaves_only_the_kept_api(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "BACKFILL_")) and "DATABASE" not in k
    }
    started = time.monotonic()
    demo = spawn(
        "the demo",
        [*DEMO, "--keep", "--workdir", str(workdir)],
        cwd=tmp_path,
        env=env | {"COLUMNS": "160"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = demo.communicate(timeout=DEMO_TIMEOUT)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
    seconds = time.monotonic() - started
    print(stdout, stderr, f"demo wall time: {seconds:.1f}s", sep="\n")

    pid_file = workdir / "api.pid"
    kept_pid = int(pid_file.read_text()) if pid_file.exists() else None
    try:
        assert demo.returncode == 0, stderr[-3000:]
        assert "coverage at http://127.0.0.1:" in stdout
        for kind in KINDS:
            assert re.search(rf"│ {kind}\s+│\s+\d+ │", stdout), kind
        assert "failures, from the failure ledger" in stdout
        assert "corrupt/" in stdout
        # Nothing the demo started is left in its session (the kept API has its own).
        # Python's multiprocessing resource tracker may take a moment to see its parent gone.
        deadline = time.monotonic() + 10
        while session_members(demo.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert session_members(demo.pid) == []

        url = re.search(r"export BACKFILL_API_URL=(\S+)", stdout)
        token = re.search(r"export BACKFILL_API_TOKEN=(\S+)", stdout)
        assert url and token and kept_pid, stdout
        coverage = httpx.get(
            f"{url[1]}/api/v1/backfills",
            headers={"Authorization": f"Bearer {token[1]}"},
            timeout=60,
        )
        assert coverage.status_code == 200
        by_kind = {k["kind"]: k for k in coverage.json()["kinds"]}
        hashing = by_kind["file-hashing"]
        assert hashing["done"] == hashing["total"] > 0
    finally:
        if kept_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(kept_pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while Path(f"/proc/{kept_pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            with contextlib.suppress(ProcessLookupError):  # SIGTERM was not enough
                os.kill(kept_pid, signal.SIGKILL)
    assert seconds < DEMO_TIMEOUT


def test_a_demo_server_whose_port_was_taken_starts_on_another(tmp_path: Path) -> None:
    """The port the demo chose for a server may be taken before the server binds it."""
    from api.migrate import upgrade
    from ops.demo import Layout, _api_server

    layout = Layout(tmp_path)
    layout.logs.mkdir(parents=True)
    database_url = f"sqlite:///{layout.database}"
    upgrade(database_url)
    api = _api_server(layout, database_url, detach=False)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", api.port))
        holder.listen()
        taken = api.port
        api.start()
        try:
            api.wait_healthy(server_timeout())
            assert api.port != taken and api.ports_tried == 2
            assert httpx.get(f"{api.url}/api/v1/health", timeout=10).status_code == 200
            assert re.search(rf"{taken}\b.*already in use", (layout.logs / "api.log").read_text())
        finally:
            api.stop()
