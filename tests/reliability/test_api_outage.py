"""The API is SIGKILLed in the middle of a file-hashing run and comes back two minutes later:
the same run waits it out (the client retries until BACKFILL_API_RETRY_DEADLINE, default
300 s) and completes; every hash is hashlib's, and every record is applied exactly once.

One test, and a slow one by nature (it waits out a 120 s outage): the client's deadline,
backoff and log lines are covered without waiting in tests/flows/test_client.py.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from flows.file_hashing import file_hashing
from tests.conftest import LiveApi
from tests.helpers import file_items, register
from tests.reliability.faults import kill_api_when
from tests.reliability.helpers import Db, assert_hashed_once, small_files

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_api_url")]

FILES = 3000
BATCH = 20
OUTAGE = 120.0


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.timeout(600)
def test_run_survives_the_api_gone_for_two_minutes(
    flow_env: LiveApi, media_root: Path, db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BACKFILL_MAX_RETRIES")  # the deadline alone, as in production
    monkeypatch.delenv("BACKFILL_API_RETRY_DEADLINE", raising=False)
    paths = small_files(media_root, FILES)
    register(flow_env, file_items(media_root, paths, sizes=False))
    crash = kill_api_when(flow_env, db, kind="file-hashing", applied=600, down_for=OUTAGE)
    lines = Lines()
    run_logger = logging.getLogger("prefect.flow_runs")
    run_logger.addHandler(lines)
    try:
        started = time.monotonic()
        report = file_hashing(batch_size=BATCH, concurrency=3)
        took = time.monotonic() - started
    finally:
        run_logger.removeHandler(lines)
    crash.wait_restarted()

    assert crash.applied_at_kill is not None and 600 <= crash.applied_at_kill < FILES
    assert took >= OUTAGE
    # The same run, not a rerun, did all of it: nothing failed, nothing twice.
    assert report.status == "completed", report.reason
    assert (report.processed, report.applied, report.unchanged) == (FILES, FILES, 0)
    assert (report.failed, report.rejected, report.failed_chunks) == (0, 0, 0)
    assert_hashed_once(db, media_root, FILES)
    flow_runs = db.rows("SELECT DISTINCT flow_run_id FROM audit WHERE kind = 'file-hashing'")
    assert [r for (r,) in flow_runs] == [report.flow_run_id]
    # One line as the API went, one as it came back; not one per retry.
    said = [(r.levelname, r.getMessage()) for r in lines.records]
    down = [m for level, m in said if level == "WARNING" and "does not answer" in m]
    up = [m for level, m in said if level == "INFO" and "answers again" in m]
    assert len(down) == 1 and len(up) == 1, said


@pytest.mark.timeout(300)
def test_api_gone_past_the_deadline_fails_the_run_with_that_reason_and_a_rerun_continues(
    flow_env: LiveApi, media_root: Path, db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = 400
    monkeypatch.delenv("BACKFILL_MAX_RETRIES")
    monkeypatch.setenv("BACKFILL_API_RETRY_DEADLINE", "3")
    paths = small_files(media_root, files)
    register(flow_env, file_items(media_root, paths, sizes=False))
    crash = kill_api_when(flow_env, db, kind="file-hashing", applied=100, down_for=20)
    lines = Lines()
    run_logger = logging.getLogger("prefect.flow_runs")
    run_logger.addHandler(lines)
    try:
        state = file_hashing(batch_size=BATCH, concurrency=3, return_state=True)
    finally:
        run_logger.removeHandler(lines)

    assert state.is_failed()
    message = state.message or ""
    assert "gave up after retrying for 3s (BACKFILL_API_RETRY_DEADLINE)" in message, message
    errors = [r for r in lines.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == [f"run failed: {message}"]
    assert all(r.exc_info is None for r in lines.records)
    crash.wait_restarted()
    first = db.applied("file-hashing")
    assert 100 <= first < files

    again = file_hashing(batch_size=BATCH, concurrency=3)  # the rerun (or a UI Retry)

    assert again.status == "completed", again.reason
    assert again.applied == files - first and again.unchanged == 0
    assert_hashed_once(db, media_root, files)
