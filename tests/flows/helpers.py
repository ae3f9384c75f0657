"""Module-level (so picklable) compute functions for tests; no Prefect, so spawned workers
start fast."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from api.schemas import DurationResult
from flows.compute.duration import media_duration
from flows.compute.errors import MediaError
from flows.spec import BackfillParams, Job

WARMUP_LOG = "BACKFILL_TEST_WARMUP_LOG"


def warm_up() -> None:
    """Record which worker process warmed up (once per process)."""
    with Path(os.environ[WARMUP_LOG]).open("a") as log:
        log.write(f"{os.getpid()}\n")


def wav_duration(job: Job[BackfillParams]) -> DurationResult:
    return DurationResult(record_id=job.item.record_id, duration=media_duration(job.file))


def fake_duration(job: Job[BackfillParams]) -> DurationResult | dict[str, Any]:
    """Items say what to do in their uri: ok/SECONDS, corrupt/..., negative/..., crash/..."""
    uri = job.item.uri or ""
    what, _, rest = uri.partition("/")
    rid = job.item.record_id
    if what == "ok":
        return DurationResult(record_id=rid, duration=float(rest))
    if what == "corrupt":
        raise MediaError(f"{uri} has a corrupt header")
    if what == "negative":
        return {"record_id": rid, "duration": -1.0}
    raise RuntimeError(f"bug while computing {uri}")


def slow_wav_duration(job: Job[BackfillParams]) -> DurationResult:
    """A WAV's duration, a quarter of a second of work each: a run still busy when stopped."""
    import time

    time.sleep(0.25)
    return wav_duration(job)
