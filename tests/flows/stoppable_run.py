"""A media-duration run on a process pool of slow items, in a process of its own, for the
cancel test: `python -m tests.flows.stoppable_run`. Exits 143 when stopped by SIGTERM."""

from __future__ import annotations

import sys
from dataclasses import replace

from prefect import flow

from flows.engine import BackfillReport, chunk_task_runner, finish, run_backfill
from flows.media_duration import MEDIA_DURATION
from flows.spec import BackfillParams
from tests.flows.helpers import slow_wav_duration

#: media-duration with a slow compute, on a pool of two processes.
SLOW = replace(MEDIA_DURATION, compute=slow_wav_duration, executor="process", workers=2)


@flow(name="stoppable-durations", task_runner=chunk_task_runner())
def stoppable_durations() -> BackfillReport:
    return finish(run_backfill, SLOW, BackfillParams(batch_size=10, concurrency=2))


if __name__ == "__main__":
    try:
        report = stoppable_durations()
    except BaseException as exc:  # Prefect's TerminationSignal on SIGTERM
        print(f"stopped: {type(exc).__name__}", flush=True)
        sys.exit(143)
    print(f"done: {report.applied}", flush=True)
