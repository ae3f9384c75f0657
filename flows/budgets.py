"""Budgets of a run: its pace (`max_records_per_second`) and the per-kind Prefect concurrency
limit on its API writes (`backfill-api-<kind>`).

- `Pacer` keeps a run within its records per second across every chunk in flight: each chunk
  takes its records from it before posting them (a shared schedule, not a sleep per chunk).
- `api_limit(kind)` names the kind's Prefect global concurrency limit when this run can use
  it (a flow run against a Prefect server, the limit exists and is active), and `api_slot`
  holds one of its slots around a chunk's API writes. Every run of the kind (nightly,
  ad-hoc, shards, on any machine) shares the limit, so together they make at most `limit`
  writes at once. Create the limits with `python -m deployments.budgets`.

Without a Prefect server (`backfill run` with no PREFECT_API_URL: a temporary server), or
without the limit, writes are not limited: one line says so, the run goes on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import CancelledError
from contextlib import contextmanager

from api.schemas import BackfillKind

#: The Prefect global concurrency limit of a kind's API writes: `backfill-api-<kind>`.
API_LIMIT_PREFIX = "backfill-api-"


class PacerStopped(CancelledError):
    """The run stopped while a chunk waited for its turn: the chunk posts nothing."""


class Pacer:
    """At most `rate` records a second, over the whole run, whatever the chunks in flight.

    A chunk of n records takes n / rate seconds of the run's schedule: the first chunk is
    due n / rate seconds after it asks, each next one that much after the previous one's due
    time (or after it asks, when the run fell behind: idle time is not saved up for a
    burst). So a run of N records lasts at least N / rate seconds, and any window of w
    seconds sees at most rate * w records plus one chunk. Thread-safe: the chunk threads
    share one pacer.
    """

    def __init__(self, rate: float) -> None:
        if not rate > 0:
            raise ValueError("rate must be above 0")
        self.rate = rate
        self._due = 0.0
        self._lock = threading.Lock()
        self._stopped = threading.Event()

    def take(self, records: int) -> float:
        """Wait until `records` more fit within the rate; return the seconds waited.
        Raises `PacerStopped` if the run stops meanwhile."""
        with self._lock:
            asked = time.monotonic()
            self._due = due = max(self._due, asked) + records / self.rate
        # In steps: a cancel raised in this thread (the flow's, on a remote runner) goes through.
        while (left := due - time.monotonic()) > 0:
            if self._stopped.wait(min(left, 1.0)):
                raise PacerStopped("the run was stopped")
        return due - asked

    def stop(self) -> None:
        """Wake every waiting chunk with `PacerStopped` (the run was cancelled or failed)."""
        self._stopped.set()


def api_limit_name(kind: BackfillKind) -> str:
    return f"{API_LIMIT_PREFIX}{kind.value}"


def api_limit(kind: BackfillKind) -> str | None:
    """The name of `kind`'s concurrency limit if this run is to hold it around its writes:
    in a flow run, against a Prefect server (not a temporary one), with the limit active.
    Logs one line either way."""
    from prefect import get_run_logger
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import get_current_settings

    if FlowRunContext.get() is None or not get_current_settings().api.url:
        return None
    name = api_limit_name(kind)
    logger = get_run_logger()
    try:
        with get_client(sync_client=True) as client:
            limit = client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        logger.info(
            "no concurrency limit %s: API writes are not limited "
            "(create it with `python -m deployments.budgets`)",
            name,
        )
        return None
    if not limit.active:
        logger.info("concurrency limit %s is inactive: API writes are not limited", name)
        return None
    logger.info("API writes hold a slot of %s (limit %d)", name, limit.limit)
    return name


@contextmanager
def api_slot(name: str | None) -> Iterator[None]:
    """One slot of the concurrency limit `name` while the block runs (nothing if None). A
    limit deleted meanwhile is skipped with a warning (Prefect's `strict=False`)."""
    if name is None:
        yield
        return
    from prefect.concurrency.sync import concurrency

    with concurrency(name, occupy=1, strict=False):
        yield
