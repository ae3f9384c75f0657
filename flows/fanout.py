"""One run fanned out over the work pool: what a flow run with `shards=N` (N > 1) does.

Instead of processing records itself, the run (the *parent*):

1. makes sure its deployment has a twin for shard runs, `<deployment>-shards` (say
   `media-duration/nightly-shards`): a copy of the parent's deployment (same entrypoint,
   pull steps, pool, queue, parameter schema) without its schedule and without its
   concurrency limit. The children cannot run on the parent's own deployment: its limit of
   one run at a time is held by the parent, so they would wait for it forever. The twin is
   written (upserted) by every fanned-out run, so it never drifts from its template;
2. starts N child runs of that twin through `run_deployment` (subflows: linked to the parent
   in the UI), child `i` with `shard_index=i, shard_count=N, shards=1` and the parent's other
   parameters (`limit` and `max_records_per_second` split between them), each under the
   idempotency key `<parent flow run id>/shard-<i>-of-<N>`. Any worker of the pool takes them;
3. polls them until every one is final (or `SHARD_DEADLINE` passes), moving its progress
   artifact with theirs, then reads each child's summary artifact (artifacts live on the
   Prefect server: every machine can read them; a result would need shared storage), and
   publishes a table of the shards and the combined summary;
4. returns the combined `BackfillReport`, or ends Failed naming the shards that failed.

A Retry of the parent (the UI's button) runs it again with the same flow run id, so the same
idempotency keys: Prefect's server hands back the existing child for each (it never creates a
second run for a key, whatever the first one's state). Completed children are kept as they
are; a Failed, Crashed or Cancelled child is set to Scheduled ("AwaitingRetry", as the UI's
Retry does) and a worker runs it again; a child still running is waited for. So only the
shards that did not complete run again, and done records are not pending anyway.

Served deployments (`python -m deployments.serve`, no work pool) have their twins served
beside them, so a fanned-out run's children run there too (on that one machine).

A parent that is not a deployment run (a flow called in-process, `backfill run ... --shards`)
fans out on `<kind>/adhoc`'s twin: the children need a deployment on a pool either way, and
an operator's one-off belongs on the lower-priority `adhoc` queue (docs/operations.md,
"Budgets").
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from prefect import get_run_logger, runtime
from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.sorting import ArtifactSort
from prefect.context import FlowRunContext
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.states import Scheduled
from pydantic import BaseModel

from api.schemas import BackfillKind
from flows.engine import TOP_ERRORS, BackfillReport, ErrorCount, publish_report
from flows.settings import ConfigError
from flows.spec import BackfillParams

#: The twin deployment of shard runs is named after its template with this suffix.
SHARDS_SUFFIX = "-shards"
#: The deployment a parent that is not a deployment run fans out from (an operator's run).
DEFAULT_DEPLOYMENT = "adhoc"
#: Seconds between two polls of the children (one call for their states, one for progress).
POLL_SECONDS = 2.0
#: Longest a parent waits for its children; a child not final by then counts as failed (it
#: goes on running; a Retry of the parent attaches to it again).
SHARD_DEADLINE = 24 * 3600.0
#: Final states after which a Retry of the parent runs the child again.
RERUN_STATES = frozenset({"FAILED", "CRASHED", "CANCELLED"})


class ShardOutcome(BaseModel):
    """One child run as the parent saw it at the end."""

    index: int
    flow_run_id: str
    name: str
    state: str  # the state's name: Completed, Failed, Crashed, Running (past the deadline)...
    completed: bool
    message: str | None = None
    #: From the child's summary artifact; None if it wrote none (it crashed first).
    report: BackfillReport | None = None


# --- Pure parts: parameters of a shard, the combined report --------------------------------


def shard_limit(limit: int | None, shards: int, index: int) -> int | None:
    """Shard `index`'s share of the parent's `limit` (the shares add up to it)."""
    if limit is None:
        return None
    return limit // shards + (1 if index < limit % shards else 0)


def shard_parameters(params: BackfillParams, index: int) -> dict[str, Any]:
    """The flow parameters of child `index`: the parent's, as one shard of `params.shards`."""
    values = params.model_dump(mode="json", exclude=set(type(params).not_parameters))
    return values | {
        "shards": 1,
        "shard_index": index,
        "shard_count": params.shards,
        "limit": shard_limit(params.limit, params.shards, index),
        # Each shard paces itself to its share: together they keep the run's pace.
        "max_records_per_second": params.max_records_per_second / params.shards
        if params.max_records_per_second is not None
        else None,
    }


def idempotency_key(parent_id: UUID | str, index: int, shards: int) -> str:
    """The same child for the same parent run and shard, on every attempt of the parent."""
    return f"{parent_id}/shard-{index}-of-{shards}"


def combine(
    kind: BackfillKind,
    outcomes: Sequence[ShardOutcome],
    *,
    dry_run: bool,
    flow_run_id: str | None,
    seconds: float,
) -> BackfillReport:
    """The parent's report: the children's counts summed; failed if any child did not
    complete, with a reason that names each such shard."""
    reports = [o.report for o in outcomes if o.report is not None]
    errors: dict[str, int] = {}
    for report in reports:
        for e in report.top_errors:
            errors[e.error] = errors.get(e.error, 0) + e.count
    failed = [o for o in outcomes if not o.completed]
    reason = None
    if failed:
        shards = len(outcomes)
        why = "; ".join(
            f"shard {o.index} ({o.name}) {o.state}" + (f": {_why(o)}" if _why(o) else "")
            for o in failed
        )
        reason = f"{len(failed)} of {shards} shards did not complete: {why}"
    processed = sum(r.processed for r in reports)
    return BackfillReport(
        kind=kind,
        status="failed" if failed else "completed",
        reason=reason,
        dry_run=dry_run,
        flow_run_id=flow_run_id,
        processed=processed,
        applied=sum(r.applied for r in reports),
        unchanged=sum(r.unchanged for r in reports),
        rejected=sum(r.rejected for r in reports),
        failed=sum(r.failed for r in reports),
        chunks=sum(r.chunks for r in reports),
        failed_chunks=sum(r.failed_chunks for r in reports),
        pauses=sum(r.pauses for r in reports),
        verified=sum(r.verified for r in reports),
        verified_ok=sum(r.verified_ok for r in reports),
        top_errors=[
            ErrorCount(error=e, count=n)
            for e, n in sorted(errors.items(), key=lambda en: -en[1])[:TOP_ERRORS]
        ],
        seconds=seconds,
        records_per_second=processed / seconds if seconds > 0 else 0.0,
        plan_id=next((r.plan_id for r in reports if r.plan_id), None),
        skipped=sum(r.skipped for r in reports),
        changed_since_plan=sum(r.changed_since_plan for r in reports),
    )


def _why(outcome: ShardOutcome) -> str | None:
    if outcome.report is not None and outcome.report.reason:
        return outcome.report.reason
    return outcome.message


def shards_table(outcomes: Sequence[ShardOutcome]) -> list[dict[str, Any]]:
    """One row per shard run, and a total row: the parent's shards artifact."""
    rows = []
    for o in outcomes:
        r = o.report
        rows.append(
            {
                "shard": o.index,
                "flow run": o.name,
                "state": o.state,
                "processed": r.processed if r else None,
                "applied": r.applied if r else None,
                "unchanged": r.unchanged if r else None,
                "rejected": r.rejected if r else None,
                "failed": r.failed if r else None,
                "seconds": round(r.seconds, 2) if r else None,
            }
        )
    reports = [o.report for o in outcomes if o.report is not None]
    rows.append(
        {
            "shard": "all",
            "flow run": "",
            "state": f"{sum(o.completed for o in outcomes)} of {len(outcomes)} completed",
            **{
                field: sum(getattr(r, field) for r in reports)
                for field in ("processed", "applied", "unchanged", "rejected", "failed")
            },
            "seconds": None,
        }
    )
    return rows


# --- The parent run ------------------------------------------------------------------------


def fan_out(kind: BackfillKind, params: BackfillParams) -> BackfillReport:
    """Run `params.shards` shard runs of this flow on the work pool, wait for them, and
    report them together; raise `BackfillFailed` if one did not complete."""
    started = time.perf_counter()
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        raise ConfigError("shards needs a flow run (the children are its subflows)")
    parent = context.flow_run
    logger = get_run_logger()
    with get_client(sync_client=True) as client:
        deployment_id, deployment_name = _shards_deployment(client, kind)
        logger.info("fanning out into %d shard runs of %s", params.shards, deployment_name)
        children = [
            _start_shard(client, deployment_id, params, parent, index)
            for index in range(params.shards)
        ]
        final = _wait(client, kind, children)
        outcomes = [_outcome(client, kind, index, run) for index, run in enumerate(final)]
    report = combine(
        kind,
        outcomes,
        dry_run=params.dry_run,
        flow_run_id=str(parent.id),
        seconds=time.perf_counter() - started,
    )
    create_table_artifact(
        key=f"{kind.value}-shards",
        table=shards_table(outcomes),
        description=f"# {kind.value}: {params.shards} shard runs",
    )
    return publish_report(
        report, f"# {kind.value} backfill over {params.shards} shards: {report.status}"
    )


def _shards_deployment(client: SyncPrefectClient, kind: BackfillKind) -> tuple[UUID, str]:
    """The id and name of the twin deployment the children run on (created or updated)."""
    own = runtime.deployment.id
    try:
        if own:
            template = client.read_deployment(UUID(own))
        else:
            template = client.read_deployment_by_name(f"{kind.value}/{DEFAULT_DEPLOYMENT}")
    except ObjectNotFound:
        raise ConfigError(
            f"shards needs a deployment on a work pool: run it as a deployment run, or deploy "
            f"{kind.value}/{DEFAULT_DEPLOYMENT} (`prefect deploy --all`)"
        ) from None
    flow_name = client.read_flow(template.flow_id).name
    if template.name.endswith(SHARDS_SUFFIX):  # a run of the twin itself fans out on it
        return template.id, f"{flow_name}/{template.name}"
    name = template.name + SHARDS_SUFFIX
    if template.work_pool_name is None:  # served: `deployments.serve` serves the twin
        try:
            return client.read_deployment_by_name(f"{flow_name}/{name}").id, f"{flow_name}/{name}"
        except ObjectNotFound:
            raise ConfigError(
                f"shards needs {flow_name}/{name} for its shard runs: deploy on a work pool "
                "(`prefect deploy --all`) or serve with `python -m deployments.serve`"
            ) from None
    twin = client.create_deployment(  # an upsert: the same (flow, name) is updated in place
        flow_id=template.flow_id,
        name=name,
        version=template.version,
        description=f"Shard runs of {flow_name}/{template.name} (runs with shards > 1 start "
        "them); no schedule, no concurrency limit.",
        parameters=template.parameters,
        work_pool_name=template.work_pool_name,
        work_queue_name=template.work_queue_name,
        tags=[t for t in template.tags if t != "nightly"] + ["shards"],
        storage_document_id=template.storage_document_id,
        path=template.path,
        entrypoint=template.entrypoint,
        infrastructure_document_id=template.infrastructure_document_id,
        parameter_openapi_schema=template.parameter_openapi_schema,
        pull_steps=template.pull_steps,
        enforce_parameter_schema=template.enforce_parameter_schema,
        job_variables=template.job_variables,
    )
    return twin, f"{flow_name}/{name}"


def _start_shard(
    client: SyncPrefectClient,
    deployment_id: UUID,
    params: BackfillParams,
    parent: FlowRun,
    index: int,
) -> FlowRun:
    """Child `index`: created, or the existing one of an earlier attempt of the parent (run
    again if it did not complete)."""
    child = run_deployment(
        deployment_id,
        parameters=shard_parameters(params, index),
        flow_run_name=f"{parent.name}-shard-{index}-of-{params.shards}",
        idempotency_key=idempotency_key(parent.id, index, params.shards),
        timeout=0,  # start them all; `_wait` polls
        as_subflow=True,
    )
    assert isinstance(child, FlowRun)  # the sync call (not a coroutine)
    state = child.state
    if state is not None and state.type.value in RERUN_STATES:
        get_run_logger().info(
            "shard %d (%s) was %s: running it again", index, child.name, state.name
        )
        client.set_flow_run_state(
            child.id,
            Scheduled(name="AwaitingRetry", message="its parent run was retried"),
            force=True,
        )
    return child


def _wait(client: SyncPrefectClient, kind: BackfillKind, children: list[FlowRun]) -> list[FlowRun]:
    """Poll the children until every one is final or the deadline passes; move the parent's
    progress artifact with theirs. The children as last read, in shard order."""
    logger = get_run_logger()
    ids = [child.id for child in children]
    progress_id: Any = create_progress_artifact(
        progress=0.0,
        key=f"{kind.value}-progress",
        description=f"{kind.value}: mean progress of {len(ids)} shard runs",
    )
    deadline = time.monotonic() + SHARD_DEADLINE
    reported: set[UUID] = set()
    shown = 0.0
    while True:
        found = {
            run.id: run
            for run in client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)), limit=len(ids)
            )
        }
        current = [found.get(child.id, child) for child in children]
        for index, run in enumerate(current):
            if _is_final(run) and run.id not in reported:
                reported.add(run.id)
                assert run.state is not None
                logger.info(
                    "shard %d (%s): %s, %d of %d shards final",
                    index,
                    run.name,
                    run.state.name,
                    len(reported),
                    len(ids),
                )
        progress = _progress(client, kind, current)
        if progress != shown:
            shown = progress
            update_progress_artifact(progress_id, progress=progress)
        if len(reported) == len(ids) or time.monotonic() > deadline:
            return current
        time.sleep(POLL_SECONDS)


def _is_final(run: FlowRun) -> bool:
    # A child just set to AwaitingRetry still reads as Failed until the write lands; it is
    # Scheduled by the time we poll.
    return run.state is not None and run.state.is_final()


def _progress(client: SyncPrefectClient, kind: BackfillKind, runs: list[FlowRun]) -> float:
    """The mean of the children's progress artifacts (100 for a final child)."""
    latest = _latest_artifacts(
        client, f"{kind.value}-progress", [r.id for r in runs if not _is_final(r)]
    )
    each = [
        100.0 if _is_final(run) else float(latest[run.id] if run.id in latest else 0.0)
        for run in runs
    ]
    return round(sum(each) / len(each), 1)


def _latest_artifacts(
    client: SyncPrefectClient, key: str, flow_run_ids: list[UUID]
) -> dict[UUID, Any]:
    """The data of each flow run's newest artifact with `key`."""
    if not flow_run_ids:
        return {}
    artifacts = client.read_artifacts(
        artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=flow_run_ids),
            key=ArtifactFilterKey(any_=[key]),
        ),
        sort=ArtifactSort.CREATED_DESC,
    )
    latest: dict[UUID, Any] = {}
    for artifact in artifacts:
        if artifact.flow_run_id is not None and artifact.flow_run_id not in latest:
            data = artifact.data
            latest[artifact.flow_run_id] = json.loads(data) if isinstance(data, str) else data
    return latest


def _outcome(
    client: SyncPrefectClient, kind: BackfillKind, index: int, run: FlowRun
) -> ShardOutcome:
    state = run.state
    completed = state is not None and state.is_completed()
    report = None
    table = _latest_artifacts(client, f"{kind.value}-summary", [run.id]).get(run.id)
    if table:
        report = BackfillReport.from_table(kind, table, flow_run_id=str(run.id))
    return ShardOutcome(
        index=index,
        flow_run_id=str(run.id),
        name=run.name,
        state=state.name if state is not None else "unknown",
        completed=completed,
        message=(state.message or None) if state is not None else None,
        report=report,
    )
