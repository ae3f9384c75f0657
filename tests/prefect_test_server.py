"""The run's Prefect test server (`start_prefect_harness` in tests/conftest.py): Prefect's API
app under uvicorn, as `prefect_test_harness` runs it, which also exits once the pytest process
that owns the run is gone (killed, not only ended), so no server outlives a run.

    python tests/prefect_test_server.py OWNER_PID PORT
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import uvicorn


def exit_when_gone(owner: int) -> None:
    """SIGTERM this process (uvicorn's graceful stop) once process `owner` has ended."""
    while True:
        try:
            os.kill(owner, 0)
        except ProcessLookupError:
            os.kill(os.getpid(), signal.SIGTERM)
            return
        time.sleep(1)


if __name__ == "__main__":
    owner, port = int(sys.argv[1]), int(sys.argv[2])
    threading.Thread(target=exit_when_gone, args=(owner,), daemon=True).start()
    uvicorn.run(
        "prefect.server.api.server:create_app",
        factory=True,
        host="127.0.0.1",
        port=port,
        log_level="error",
        lifespan="on",
        # Open connections (an xdist worker's, orphaned with the run) hold a graceful stop.
        timeout_graceful_shutdown=5,
    )
