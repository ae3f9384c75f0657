"""The record of every run, from the flow side: start and end of each flow run, and events
(pause, resume, cancel...) with their reasons, written to the API (`/api/v1/runs`).

Best effort by design: a run whose record cannot be written (the API answers 404 because it
predates the feature, or is briefly away) logs one WARNING and goes on; the record never
fails a backfill. Start and end are idempotent (keyed by the flow run id), so the client
retries them; an event is never sent twice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from api.schemas import BackfillKind, RunEnd, RunEventIn, RunStart
from flows.client import (
    APIError,
    AuthenticationError,
    BackfillClient,
    PermissionDeniedError,
    current_flow_run,
)
from flows.settings import ConfigError, load_settings
from flows.spec import BackfillParams

if TYPE_CHECKING:
    from prefect import Flow
    from prefect.client.schemas.objects import FlowRun, State

    from flows.engine import BackfillReport

log = logging.getLogger("flows.record")


def _logger() -> logging.Logger | logging.LoggerAdapter[Any]:
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return log


def _flow_run_id(client: BackfillClient) -> str | None:
    return client.flow_run_id or current_flow_run()[0]


def record_event(
    client: BackfillClient, event: str, reason: str | None = None, *, flow_run_id: str | None = None
) -> bool:
    """Record `event` (pause, resume, cancel, ...) of the current flow run (or `flow_run_id`)
    with its reason. False, with a WARNING, when it could not be written."""
    run_id = flow_run_id or _flow_run_id(client)
    if run_id is None:
        return False
    try:
        client.run_event(run_id, RunEventIn(event=event, reason=reason[:4000] if reason else None))
    except (APIError, ValueError) as exc:
        _logger().warning("run event %r not recorded: %s", event, exc)
        return False
    return True


#: The counts a run's end carries: the report's fields of the same names.
RUN_COUNTS = set(RunEnd.model_fields) - {"state", "reason"}


@dataclass(eq=False)
class RunRecord:
    """The record of one flow run: `start()` when it starts, `end(...)` when it ends."""

    client: BackfillClient
    kind: BackfillKind
    params: BackfillParams
    compute_version: int | None = field(kw_only=True)
    flow_run_id: str | None = field(init=False)
    #: The run's report, set by the body of `recording` when it has one.
    report: BackfillReport | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.flow_run_id = _flow_run_id(self.client)

    def start(self) -> None:
        if self.flow_run_id is None:  # not inside a flow run: nothing to key the record on
            return
        p = self.params
        run = RunStart(
            flow_run_id=self.flow_run_id,
            kind=self.kind,
            parameters=p.model_dump(mode="json"),
            mode=p.mode,
            plan_id=p.plan_id,
            compute_version=self.compute_version,
            dry_run=p.dry_run,
            attempt=max(1, current_flow_run()[1]),
        )
        self._write("start", lambda: self.client.start_run(run))

    def end(self, report: BackfillReport | None = None, error: BaseException | None = None) -> None:
        """From the run's report, or from the exception that ended it."""
        if self.flow_run_id is None:
            return
        if report is not None:
            end = RunEnd(
                state="completed" if report.status == "completed" else "failed",
                reason=report.reason[:4000] if report.reason else None,
                **report.model_dump(include=RUN_COUNTS),
            )
        elif isinstance(error, Exception):
            from flows.engine import failure_reason

            end = RunEnd(state="failed", reason=(failure_reason(error) or repr(error))[:4000])
        else:  # stopped: SIGTERM, Ctrl-C (a Cancel's hook says "cancelled" after this)
            end = RunEnd(state="crashed", reason=f"stopped ({type(error).__name__})")
        flow_run_id = self.flow_run_id
        self._write("end", lambda: self.client.end_run(flow_run_id, end))

    def _write(self, what: str, call: Any) -> None:
        try:
            call()
        except (AuthenticationError, PermissionDeniedError) as exc:
            # The run itself fails on the same token at once, and says so in one line.
            _logger().debug("run %s not recorded: %s", what, exc)
        except APIError as exc:
            _logger().warning("run %s not recorded: %s", what, exc)


@contextmanager
def recording(
    client: BackfillClient,
    kind: BackfillKind,
    params: BackfillParams,
    *,
    compute_version: int | None,
) -> Iterator[RunRecord]:
    """Record the start now, and the end as the block ends: from `record.report` (set it),
    or from the exception that ended the block."""
    record = RunRecord(client, kind, params, compute_version=compute_version)
    record.start()
    try:
        yield record
    except BaseException as exc:
        record.end(error=exc)
        raise
    if record.report is None:
        record.end(error=RuntimeError("the run ended without a report"))
    else:
        record.end(record.report)


def _hook(state_name: str, event: str) -> Any:
    """A Prefect state hook recording `event` and the final state, with the state's message:
    Prefect runs it where the flow ran, or in the worker that cancelled a killed process."""

    def hook(_flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
        reason = state.message or state.name
        try:
            settings = load_settings()
            with BackfillClient.from_settings(settings) as client:
                run_id = str(flow_run.id)
                if record_event(client, event, reason, flow_run_id=run_id):
                    end = RunEnd(state=state_name, reason=(reason or "")[:4000] or None)
                    client.end_run(run_id, end)
        except (APIError, ConfigError) as exc:
            _logger().warning("run %s not recorded: %s", event, exc)

    hook.__name__ = f"record_{event}"
    return hook


#: `on_cancellation` and `on_crashed` hooks of every backfill flow.
ON_CANCELLATION = [_hook("cancelled", "cancel")]
ON_CRASHED = [_hook("crashed", "crash")]
