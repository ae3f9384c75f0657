"""The Prefect servers of the tests, with SQLite lock waits of seconds (`shorter_lock_waits`).

The run's Prefect test server (`start_prefect_harness` in tests/conftest.py): Prefect's API
app under uvicorn, as `prefect_test_harness` runs it (the run's reaper, tests/reaper.py, stops
it if the run is killed):

    python tests/prefect_test_server.py PORT

Prefect's own CLI, for the deployment groups' `prefect server start` (tests/deploy/conftest.py):

    python tests/prefect_test_server.py prefect server start --host 127.0.0.1 --port PORT
"""

from __future__ import annotations

import sys
from typing import Any

import uvicorn

#: How long a write of this server waits for SQLite's write lock before it fails (Prefect: 60 s,
#: hard-coded). See `shorter_lock_waits`.
LOCK_WAIT_MS = 5000


def shorter_lock_waits(milliseconds: int) -> None:
    """Make this server's SQLite connections wait `milliseconds` for the write lock, not the
    60 s Prefect 3.8.8 hard-codes (`PRAGMA busy_timeout = 60000` in `setup_sqlite`).

    Under the run's parallel flows, Prefect's server stalls on its own SQLite now and then
    (PrefectHQ/prefect#18934): `py-spy dump` showed two of its connection threads waiting
    for the write lock, its event loop idle, and no other process of the run using the CPU.
    The holder is one of its own connections, whose coroutine is itself waiting: a deadlock
    inside the process, most likely. Nothing moves until the waiter gives up: the whole run
    sat idle (both cores at 1-4 %) for up to a minute at a time, two or three times a run,
    and a flow whose `POST /flow_runs/` met it got a 503 after its client's retries. With a
    short wait the deadlock ends within seconds:
    the waiting write fails and is retried (the task-run recorder retries its events, Prefect's
    client retries a 503), as it would have after the minute.

    The deployment groups' `prefect server start` met the same: docket logged
    `mark_work_queues_ready` after 60523 ms, and for that minute no worker poll was answered,
    so one deployment test took 82 s instead of 22 s."""
    from prefect.server.database.configurations import AioSqliteConfiguration

    setup = AioSqliteConfiguration.setup_sqlite

    def setup_sqlite(self: AioSqliteConfiguration, conn: Any, record: Any) -> None:
        setup(self, conn, record)
        cursor = conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {milliseconds};")
        cursor.close()

    AioSqliteConfiguration.setup_sqlite = setup_sqlite  # type: ignore[method-assign]


if __name__ == "__main__":
    shorter_lock_waits(LOCK_WAIT_MS)
    if sys.argv[1] == "prefect":
        from prefect.cli import app

        sys.argv = sys.argv[1:]
        sys.exit(app())
    uvicorn.run(
        "prefect.server.api.server:create_app",
        factory=True,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        log_level="error",
        lifespan="on",
        # Open connections (an xdist worker's, orphaned with the run) hold a graceful stop.
        timeout_graceful_shutdown=5,
    )
