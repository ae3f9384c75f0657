"""The flow process itself (`backfill run file-hashing`, i.e. `python -m ops.cli run`) is
SIGKILLed in the middle of a run; a new run finishes the rest and nothing is applied twice.

The worker is a real subprocess talking to a real API process (uvicorn over the session's
database: SQLite file, or PostgreSQL with BACKFILL_TEST_DATABASE_URL) and to Prefect's test
server; the second run runs in this process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.file_hashing import file_hashing
from tests.conftest import ROOT, LiveApi
from tests.helpers import file_items, register
from tests.reliability.helpers import MAX_RETRIES, Db, assert_hashed_once, small_files

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # a worker process killed mid-run

FILES = 3000
BATCH = 20


def settled(db: Db, kind: str, *, quiet: float = 0.5, timeout: float = 30.0) -> int:
    """Applied records of `kind` once no batch has committed for `quiet` s (a request the
    dead worker had sent may still be committing)."""
    deadline = time.monotonic() + timeout
    last, since = db.applied(kind), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = db.applied(kind)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return now
    raise AssertionError(f"{kind} kept committing for {timeout} s after the worker died")


@pytest.mark.timeout(180)
def test_worker_killed_mid_run_a_new_run_finishes_without_double_writes(
    flow_env: LiveApi, media_root: Path, db: Db, prefect_api_url: str, tmp_path: Path
) -> None:
    paths = small_files(media_root, FILES)
    register(flow_env, file_items(media_root, paths, sizes=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "BACKFILL_"))}
    env |= {
        "BACKFILL_API_URL": flow_env.url,
        "BACKFILL_API_TOKEN": flow_env.admin_token,
        "BACKFILL_MEDIA_ROOT": str(media_root),
        "BACKFILL_MAX_RETRIES": str(MAX_RETRIES),
        "PREFECT_API_URL": prefect_api_url,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    log_path = tmp_path / "worker.log"
    command = [sys.executable, "-m", "ops.cli", "run", "file-hashing"]
    command += ["--batch-size", str(BATCH), "--concurrency", "3"]
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + 90
            while db.applied("file-hashing") < FILES // 5:
                assert worker.poll() is None, f"the worker exited early:\n{log_path.read_text()}"
                assert time.monotonic() < deadline, f"no progress:\n{log_path.read_text()}"
                time.sleep(0.005)
            os.killpg(worker.pid, signal.SIGKILL)  # the flow process and anything it started
            assert worker.wait(timeout=30) == -signal.SIGKILL
        finally:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(timeout=30)

    before = settled(db, "file-hashing")
    assert FILES // 5 <= before < FILES, "killed after some but not all records were applied"
    (first_run,) = {
        run
        for (run,) in db.rows("SELECT DISTINCT flow_run_id FROM audit WHERE kind = 'file-hashing'")
    }

    report = file_hashing(batch_size=BATCH)  # a new run, here, does the rest

    assert report.status == "completed", report.reason
    left = FILES - before
    assert (report.processed, report.applied, report.unchanged, report.failed) == (left, left, 0, 0)
    assert_hashed_once(db, media_root, FILES)
    per_run = db.rows(
        "SELECT flow_run_id, SUM(applied) FROM audit WHERE kind = 'file-hashing' "
        "GROUP BY flow_run_id"
    )
    assert {run: int(n) for run, n in per_run} == {first_run: before, report.flow_run_id: left}
