"""The circuit breaker: when a run's records start failing en masse, it pauses, not dies.

`CircuitBreaker` watches finished chunks (no Prefect, no HTTP here) and says when to pause:

- more than `pause_failure_ratio` of the last `pause_window` records failed (judged once
  the window is full: a few bad records at the start are no trend);
- `pause_failed_chunks` chunks in a row failed entirely (every record failed).

Failures are records this run could not process (missing, unreadable, corrupt files): what
a broken mount or a bad upload causes. Rejections (the API refusing a write, mostly a
conflict with another writer) do not count.

The engine then finishes the chunks in flight and pauses the flow run through Prefect
(`flows.engine.pause_run`): the run shows Paused with the reason, and Resume (the Prefect UI,
or `backfill resume FLOW_RUN_ID`) continues from its cursor, with a fresh window. Nothing is
redone: records before the pause were posted (values or failures) and the cursor is past
them. `max_failure_ratio` stays the judgement at the end of the run.
"""

from __future__ import annotations

from collections import deque

from flows.spec import BackfillParams


class CircuitBreaker:
    """A sliding window over the last records and a count of whole chunks failing in a row."""

    def __init__(self, window: int, ratio: float, failed_chunks: int) -> None:
        self.size = window
        self.ratio = ratio
        self.failed_chunks = failed_chunks
        self.window: deque[bool] = deque(maxlen=window or 1)
        self.bad = 0  # True entries in the window
        self.in_a_row = 0

    @classmethod
    def from_params(cls, params: BackfillParams) -> CircuitBreaker:
        return cls(params.pause_window, params.pause_failure_ratio, params.pause_failed_chunks)

    @property
    def enabled(self) -> bool:
        return bool(self.size or self.failed_chunks)

    def record(self, items: int, bad: int) -> str | None:
        """Count one finished chunk (`bad` of its `items` records failed);
        the reason to pause now, or None."""
        if items <= 0:
            return None
        if self.size:
            for failed in [True] * bad + [False] * (items - bad):
                if len(self.window) == self.window.maxlen:
                    self.bad -= self.window[0]
                self.window.append(failed)
                self.bad += failed
        self.in_a_row = self.in_a_row + 1 if bad >= items else 0
        if self.failed_chunks and self.in_a_row >= self.failed_chunks:
            return (
                f"circuit breaker: {self.in_a_row} chunks in a row failed entirely "
                f"(pause_failed_chunks={self.failed_chunks})"
            )
        if self.size and len(self.window) == self.size and self.bad / self.size > self.ratio:
            return (
                f"circuit breaker: {self.bad} of the last {self.size} records failed, "
                f"more than pause_failure_ratio={self.ratio:g}"
            )
        return None

    def reset(self) -> None:
        """Start afresh (after a resume: the operator fixed the cause, or says go on)."""
        self.window.clear()
        self.bad = 0
        self.in_a_row = 0


def resume(flow_run_id: str) -> str:
    """Resume a paused flow run (what the Prefect UI's Resume does); the state it is in now.

    Prefect 3.8.8 has no `prefect flow-run resume` command: `backfill resume ID` is this.
    Raises ValueError if the run is not paused (or its pause expired)."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.responses import SetStateStatus
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            result = client.resume_flow_run(UUID(flow_run_id))
        except ObjectNotFound:
            raise ValueError(f"no flow run {flow_run_id}") from None
        if result.status != SetStateStatus.ACCEPT:
            reason = getattr(result.details, "reason", None) or result.status.value
            raise ValueError(f"flow run {flow_run_id} was not resumed: {reason}")
        state = client.read_flow_run(UUID(flow_run_id)).state
    return str(state.name) if state is not None else "unknown"
