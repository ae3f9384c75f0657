"""The one chunk engine every backfill flow runs on.

A flow module declares a `flows.spec.Backfill` and a params model, and makes its flow with
`@backfill_flow(kind, Params)` around a body that calls `run_backfill(spec, params)`. The
run then:

1. pages pending work from the API by keyset (`after_id` = the last id seen: applied
   records stop being pending, so an offset would skip work), one page ahead of the chunks;
2. keeps `concurrency` chunk tasks in flight (one `process_chunk` task per `batch_size`
   items); each claims its items first if the spec has a `claim` hook (through the run's
   one client), computes them on the run's compute pool (threads, or spawned processes
   warmed once each), turns a bad item into a per-record failure, posts the results, then
   the failures, and returns counts;
3. moves a progress artifact as chunks finish (at most once a second), ends with a table
   artifact (stable key per kind), returns a `BackfillReport`, and raises `BackfillFailed`
   (the flow run ends Failed) when a chunk still fails after the client's retries or
   failures pass `max_failure_ratio`.

Retries are the client's (see flows.client); chunk tasks have `retries=0`, so a failed POST
never recomputes a chunk and no error is retried twice over. A rerun, or a Retry of the
flow run in the Prefect UI, continues where the last one stopped: done records are no
longer pending.
"""

from __future__ import annotations

import inspect
import os
import queue
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import (
    BrokenExecutor,
    CancelledError,
    Executor,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
)
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from itertools import repeat
from multiprocessing import get_context
from typing import Annotated, Any, Literal, TypeVar, cast

from prefect import Flow, flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import State
from prefect.context import FlowRunContext
from prefect.exceptions import Abort
from prefect.futures import PrefectFuture
from prefect.runtime import task_run
from prefect.settings import PREFECT_API_URL
from prefect.states import Failed, Paused
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from prefect.utilities.annotations import quote
from prefect.utilities.engine import propose_state_sync
from pydantic import BaseModel, Field

from api.schemas import (
    MAX_PAGE_LIMIT,
    BackfillKind,
    BatchResult,
    FailureItem,
    PendingItem,
    PlanPublic,
    ReprocessMode,
)
from flows.breaker import CircuitBreaker
from flows.budgets import Pacer, api_limit, api_slot
from flows.client import APIError, BackfillClient, is_retryable
from flows.compute.errors import MediaError
from flows.media import sweep_downloads
from flows.plan import load_plan, plan_table
from flows.record import ON_CANCELLATION, ON_CRASHED, recording
from flows.record import record_event as record_event  # the engine's: pause, resume, cancel...
from flows.settings import ClientSettings, ConfigError, load_settings
from flows.spec import (
    MAX_CONCURRENCY,
    Backfill,
    BackfillParams,
    ItemOutcome,
    Job,
    Mismatch,
    Skip,
    public_reason,
    ready,
    run_items,
)
from flows.verify import Reservoir, Verification, verify_sample

P = TypeVar("P", bound=BackfillParams)

#: Longest failure text the ledger accepts.
MAX_ERROR_CHARS = 4000
#: Fewest records a run processes before the failure ratio may stop it early.
MIN_SAMPLE = 20
#: How many distinct errors the summary lists.
TOP_ERRORS = 5
#: Least seconds between two moves of the progress artifact (each is a call to Prefect's API
#: from the flow's loop; a run of many small chunks spent more time on them than on work).
PROGRESS_INTERVAL = 1.0
#: How many records "changed since plan" a run names in its log (all are counted).
LOGGED_CHANGES = 20
#: Seconds between two reads of a paused run's state (is it resumed?).
PAUSE_POLL_SECONDS = 5.0
#: Seconds Prefect keeps a pause open past `pause_timeout`, so that the run itself ends it,
#: Failed with its own reason, before Prefect's "paused and never resumed".
PAUSE_GRACE_SECONDS = 300
#: Most mismatches a run's failure reason lists (the report and artifact list them all).
REASON_MISMATCHES = 5


# --- Reports -------------------------------------------------------------------------------


class ErrorCount(BaseModel):
    error: str
    count: int


class ChunkReport(BaseModel):
    """What one chunk did."""

    first_id: int
    last_id: int
    items: int
    applied: int = 0
    unchanged: int = 0
    rejected: int = 0
    failed: int = 0
    #: Each failure's and rejection's reason, with the record's uri replaced by `<uri>`.
    errors: list[str] = Field(default_factory=list)
    seconds: float = 0.0
    #: Ids of the records whose results were posted and not rejected (none in a dry run):
    #: what verification samples from.
    written: list[int] = Field(default_factory=list)
    #: Why the chunk did not finish (the API gone past its deadline, the run stopped): its
    #: records were not posted, stay pending, and the run ends Failed with this reason.
    unfinished: str | None = None


class BackfillReport(BaseModel):
    """What a run did: the flow's return value, and the body of its summary artifact."""

    kind: BackfillKind
    status: Literal["completed", "failed"]
    reason: str | None = None
    dry_run: bool
    flow_run_id: str | None = None
    processed: int = 0
    applied: int = 0
    unchanged: int = 0
    rejected: int = 0
    failed: int = 0
    chunks: int = 0
    failed_chunks: int = 0
    top_errors: list[ErrorCount] = Field(default_factory=list)
    seconds: float = 0.0
    records_per_second: float = 0.0
    #: The plan the run applied, if any; its records skipped as done already, and as
    #: "changed since plan" (revision moved since the plan was made).
    plan_id: str | None = None
    skipped: int = 0
    changed_since_plan: int = 0
    #: Times the circuit breaker paused the run (and it was resumed).
    pauses: int = 0
    #: Verification: records sampled and recomputed, how many matched what the API stores,
    #: and every mismatch.
    verified: int = 0
    verified_ok: int = 0
    mismatches: list[Mismatch] = Field(default_factory=list)

    def table(self) -> list[dict[str, Any]]:
        """The summary as rows of metric and value."""
        rows: list[dict[str, Any]] = [
            {"metric": "status", "value": self.status + (" (dry run)" if self.dry_run else "")},
            {"metric": "processed", "value": self.processed},
            {"metric": "would apply" if self.dry_run else "applied", "value": self.applied},
            {"metric": "unchanged", "value": self.unchanged},
            {"metric": "rejected", "value": self.rejected},
            {"metric": "failed", "value": self.failed},
            {"metric": "records/s", "value": round(self.records_per_second, 1)},
            {"metric": "seconds", "value": round(self.seconds, 2)},
            {"metric": "chunks", "value": self.chunks},
            {"metric": "failed chunks", "value": self.failed_chunks},
            {"metric": "pauses", "value": self.pauses},
            {"metric": "verified", "value": self.verified},
            {"metric": "verified ok", "value": self.verified_ok},
        ]
        if self.plan_id:
            rows += [
                {"metric": "plan", "value": self.plan_id},
                {"metric": "changed since plan", "value": self.changed_since_plan},
                {"metric": "skipped (done)", "value": self.skipped},
            ]
        rows += [{"metric": "mismatch", "value": str(m)} for m in self.mismatches]
        if self.reason:
            rows.append({"metric": "reason", "value": self.reason})
        rows += [{"metric": f"error x{e.count}", "value": e.error} for e in self.top_errors]
        return rows

    @classmethod
    def from_table(
        cls, kind: BackfillKind, rows: list[dict[str, Any]], flow_run_id: str | None = None
    ) -> BackfillReport:
        """The report back from its `table()` (a shard run's summary artifact, read by the
        run that fanned it out: the artifact is what every machine can read)."""
        values = {row["metric"]: row["value"] for row in rows}
        status = str(values["status"])
        errors = [
            ErrorCount(error=str(value), count=int(metric.removeprefix("error x")))
            for metric, value in values.items()
            if metric.startswith("error x")
        ]
        return cls(
            kind=kind,
            status="completed" if status.startswith("completed") else "failed",
            reason=values.get("reason"),
            dry_run=status.endswith("(dry run)"),
            flow_run_id=flow_run_id,
            processed=values["processed"],
            applied=values.get("applied", values.get("would apply", 0)),
            unchanged=values["unchanged"],
            rejected=values["rejected"],
            failed=values["failed"],
            chunks=values.get("chunks", 0),
            failed_chunks=values.get("failed chunks", 0),
            pauses=values.get("pauses", 0),
            verified=values.get("verified", 0),
            verified_ok=values.get("verified ok", 0),
            top_errors=errors,
            seconds=values["seconds"],
            records_per_second=values["records/s"],
            plan_id=values.get("plan"),
            skipped=values.get("skipped (done)", 0),
            changed_since_plan=values.get("changed since plan", 0),
        )


class BackfillFailed(Exception):
    """The run ended Failed; `report` still says what it did."""

    def __init__(self, report: BackfillReport) -> None:
        super().__init__(f"{report.kind} backfill failed: {report.reason}")
        self.report = report

    def __reduce__(self) -> tuple[type[BackfillFailed], tuple[BackfillReport]]:
        return type(self), (self.report,)  # a persisted or pickled result keeps its report


def publish_report(report: BackfillReport, description: str) -> BackfillReport:
    """End a run with `report`: its summary artifact (stable key per kind), then
    `BackfillFailed` if it failed, else the report to return."""
    create_table_artifact(
        key=f"{report.kind.value}-summary", table=report.table(), description=description
    )
    if report.status == "failed":
        raise BackfillFailed(report)
    return report


#: Failures with a known cause: the run ends Failed with their reason, without a traceback.
EXPECTED_FAILURES = (BackfillFailed, ConfigError, APIError)


def failure_reason(exc: BaseException) -> str:
    """The one line an operator reads for an expected failure."""
    if isinstance(exc, BackfillFailed):
        return exc.report.reason or "the run failed"
    if isinstance(exc, APIError):
        return exc.message
    return str(exc)


def finish(run: Callable[..., BackfillReport], *args: Any, **kwargs: Any) -> BackfillReport:
    """`run(*args, **kwargs)` as a flow's body: an expected failure ends the flow run Failed
    with its reason as the state message and one ERROR line, not a traceback.

    (The Failed state is what the flow returns to Prefect, which makes it the run's final
    state; a caller of the flow gets the exception raised, or `state.result()` does: so
    to a caller the flow still returns a `BackfillReport` or raises.)
    """
    try:
        return run(*args, **kwargs)
    except EXPECTED_FAILURES as exc:
        reason = failure_reason(exc)
        get_run_logger().error("run failed: %s", reason)
        return cast(BackfillReport, Failed(message=reason, data=exc))


def recorded(
    kind: BackfillKind, params: BackfillParams, run: Callable[..., BackfillReport], *args: Any
) -> BackfillReport:
    """`run(*args)` recorded as a run of `kind` (a fanned-out parent: each shard run records
    itself too). Without client settings it runs unrecorded, with a WARNING."""
    try:
        settings = load_settings()
        settings.api_token()
    except ConfigError as exc:
        get_run_logger().warning("run not recorded: %s", exc)
        return run(*args)
    with (
        BackfillClient.from_settings(settings, logger=get_run_logger()) as client,
        recording(client, kind, params, compute_version=None) as record,
    ):
        record.report = run(*args)
        return record.report


def backfill_flow(
    kind: BackfillKind, params_model: type[P]
) -> Callable[[Callable[[P], BackfillReport]], Flow[..., BackfillReport]]:
    """Make `body(params)` the flow of `kind`, with the fields of `params_model` as its flat,
    typed parameters: what `prefect deployment run --param`, the Prefect UI form (a
    description per field, from the model) and `flow(**parameters)` see.

        @backfill_flow(BackfillKind.FILE_HASHING, HashingParams)
        def file_hashing(params: HashingParams) -> BackfillReport:
            \"\"\"Hash every pending file under the media root and record the digests.\"\"\"
            return run_backfill(FILE_HASHING, params)

    The body runs as a flow's body through `finish`: an expected failure ends the run Failed
    with its reason. Parameters that only fail together (a shard index not below the count)
    raise the model's `ValidationError`.
    """

    def decorate(body: Callable[[P], BackfillReport]) -> Flow[..., BackfillReport]:
        fields = {
            name: field
            for name, field in params_model.model_fields.items()
            if name not in params_model.not_parameters
        }
        parameters = [
            inspect.Parameter(
                name,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                default=field.default,
                annotation=Annotated[(field.annotation, *field.metadata)]
                if field.metadata
                else field.annotation,
            )
            for name, field in fields.items()
        ]
        signature = inspect.Signature(parameters, return_annotation=BackfillReport)

        def run(*args: Any, **kwargs: Any) -> BackfillReport:
            params = params_model(**signature.bind(*args, **kwargs).arguments)
            if params.shards > 1:  # this run only starts, watches and sums its shard runs
                from flows.fanout import fan_out

                return finish(recorded, kind, params, fan_out, kind, params)
            return finish(body, params)

        # Not functools.wraps: Prefect would read the body's one `params` argument through
        # `__wrapped__`. The name and module are the body's: entrypoints and serve use them.
        run.__name__, run.__qualname__ = body.__name__, body.__qualname__
        run.__module__ = body.__module__
        run.__signature__ = signature  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in parameters}
        run.__annotations__["return"] = BackfillReport
        args = "\n".join(f"    {name}: {field.description}" for name, field in fields.items())
        run.__doc__ = f"{inspect.cleandoc(body.__doc__ or kind.value)}\n\nArgs:\n{args}\n"
        return flow(
            name=kind.value,
            task_runner=chunk_task_runner(),
            retries=0,
            on_cancellation=ON_CANCELLATION,
            on_crashed=ON_CRASHED,
        )(run)

    return decorate


class ProgressUpdate(BaseModel):
    """Sent to progress listeners when a run starts and whenever a chunk finishes."""

    kind: BackfillKind
    processed: int
    expected: int | None
    applied: int
    unchanged: int
    rejected: int
    failed: int


ProgressListener = Callable[[ProgressUpdate], None]
_listeners: list[ProgressListener] = []


@contextmanager
def progress_listener(listener: ProgressListener) -> Iterator[None]:
    """Call `listener` (in the flow's thread) as runs in this process progress: the CLI bar."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)


# --- One chunk -----------------------------------------------------------------------------


@dataclass(eq=False)
class ChunkRunner:
    """What every chunk of one run shares: the spec, parameters, client and compute pool.

    Sent to another process (a Dask worker) it travels as the spec, the parameters and the
    client's identity only: the worker builds its own settings (from its environment: its
    token, its media root), client and pool, once per process and run.
    """

    spec: Backfill[Any, Any]
    params: BackfillParams
    settings: ClientSettings
    client: BackfillClient
    pool: Executor | None
    #: Budgets (flows.budgets), set by `run_backfill`: the run's pacer, shared by its chunks
    #: on this machine (a remote runner's chunks are paced as the run submits them), and the
    #: kind's Prefect concurrency limit held around each chunk's API writes.
    pacer: Pacer | None = None
    api_limit: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "params": self.params,
            "client_class": type(self.client),
            "flow_run_id": self.client.flow_run_id,
            "idempotency_scope": self.client.idempotency_scope,
            "api_limit": self.api_limit,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.spec, self.params = state["spec"], state["params"]
        self.api_limit = state.get("api_limit")
        self.settings, self.client, self.pool = _worker_resources(
            self.spec, state["client_class"], state["flow_run_id"], state["idempotency_scope"]
        )

    def compute(self, items: list[PendingItem]) -> list[ItemOutcome]:
        """Every item of the chunk, claimed (if the spec claims) then computed in parallel on
        the run's pool; outcomes in item order."""
        assert self.pool is not None, "a run on a remote task runner computes remotely"
        jobs = [Job(item, self.params, self.settings) for item in items]
        claimed = [self.claim(job) for job in jobs]
        ready = [job for job in claimed if isinstance(job, Job)]
        computed = iter(self._compute(ready))
        return [next(computed) if isinstance(c, Job) else c for c in claimed]

    def claim(self, job: Job[Any]) -> Job[Any] | ItemOutcome:
        """The spec's `claim` of one item: the job to compute, or its outcome already."""
        if self.spec.claim is None:
            return job
        record_id = job.item.record_id
        try:
            claimed = self.spec.claim(self.client, job)
        except MediaError as exc:
            reason = public_reason(str(exc) or "unusable item", self.settings, job.item.uri, None)
            return ItemOutcome(record_id, error=reason)
        if isinstance(claimed, Skip):
            return ItemOutcome(record_id, skipped=claimed.reason)
        return claimed

    def _compute(self, jobs: list[Job[Any]]) -> list[ItemOutcome]:
        if not jobs:
            return []
        assert self.pool is not None
        # Items go to the pool in slices, about four per worker: one hand-over (a future, a
        # wake-up; a round trip for processes) per slice, not per item. A header read costs
        # less than handing it to a thread did.
        size = -(-len(jobs) // (4 * compute_workers(self.spec)))
        slices = [jobs[i : i + size] for i in range(0, len(jobs), size)]
        try:
            done = self.pool.map(run_items, repeat(self.spec), slices)
        except RuntimeError as exc:  # the run was stopped: the pool is shut down
            raise BrokenExecutor(f"the compute pool is stopped ({exc})") from exc
        return [outcome for outcomes in done for outcome in outcomes]

    def process(self, items: list[PendingItem]) -> ChunkReport:
        started = time.perf_counter()
        outcomes = self.compute(items)
        results = [o.result for o in outcomes if o.result is not None]
        failures = [
            FailureItem(record_id=o.record_id, error=o.error[:MAX_ERROR_CHARS])
            for o in outcomes
            if o.error is not None
        ]
        posted = self._post(results, failures, items)
        planned = sum(o.planned is not None for o in outcomes)  # would apply
        skipped = sum(o.skipped is not None for o in outcomes)  # another run's
        uris = {i.record_id: i.uri for i in items}
        errors = [_pattern(f.error, uris.get(f.record_id)) for f in failures]
        errors += [_pattern(r.reason, uris.get(r.record_id or 0)) for r in posted.rejected]
        rejected = {r.record_id for r in posted.rejected}
        written = (
            [] if self.params.dry_run else [o.record_id for o in outcomes if o.result is not None]
        )
        return ChunkReport(
            first_id=items[0].record_id,
            last_id=items[-1].record_id,
            items=len(items),
            applied=posted.applied + planned,
            unchanged=posted.unchanged + skipped,
            rejected=len(posted.rejected),
            failed=len(failures),
            errors=errors,
            seconds=time.perf_counter() - started,
            written=[i for i in written if i not in rejected],
        )

    def _post(
        self, results: list[BaseModel], failures: list[FailureItem], items: list[PendingItem]
    ) -> BatchResult:
        """Post the chunk's results, then its failures: within the run's pace, holding a
        slot of the kind's API concurrency limit."""
        kind, dry_run = self.spec.kind, self.params.dry_run
        if self.pacer is not None:
            self.pacer.take(len(items))
        posted = BatchResult(dry_run=dry_run)
        if not results and (not failures or dry_run):
            return posted
        with api_slot(self.api_limit):
            if results:
                posted = self.client.post_results(kind, results, dry_run=dry_run)
            if failures and not dry_run:
                self.client.post_failures(kind, failures)
        return posted


_worker_cache: dict[tuple[str, str], tuple[ClientSettings, BackfillClient, Executor]] = {}
_worker_lock = threading.Lock()


def _worker_resources(
    spec: Backfill[Any, Any],
    client_class: type[BackfillClient],
    flow_run_id: str | None,
    idempotency_scope: str,
) -> tuple[ClientSettings, BackfillClient, Executor]:
    """Settings, client and compute threads of this worker process for one run's chunks.

    Threads even for a "process" kind: the Dask worker processes are the parallelism there
    (and a daemonic worker may not start processes of its own)."""
    key = (spec.kind.value, idempotency_scope)
    with _worker_lock:
        if key not in _worker_cache:
            settings = load_settings()
            client = client_class.from_settings(
                settings, flow_run_id=flow_run_id, idempotency_scope=idempotency_scope
            )
            pool = ThreadPoolExecutor(compute_workers(spec), thread_name_prefix=spec.kind.value)
            _worker_cache[key] = (settings, client, pool)
        return _worker_cache[key]


def _pattern(error: str, uri: str | None) -> str:
    """An error with its record's uri blanked, so equal causes count together."""
    return error.replace(uri, "<uri>") if uri else error


def _chunk_name() -> str:
    params = task_run.parameters
    items: list[PendingItem] = _unquote(params["items"])
    kind: BackfillKind = _unquote(params["runner"]).spec.kind
    return f"{kind.value}-{items[0].record_id}-{items[-1].record_id}"


def _unquote(value: Any) -> Any:
    return value.unquote() if isinstance(value, quote) else value


@task(name="process-chunk", task_run_name=_chunk_name, retries=0, cache_policy=NO_CACHE)
def process_chunk(runner: ChunkRunner, items: list[PendingItem]) -> ChunkReport:
    """Compute one chunk locally, then post its results and failures."""
    logger = get_run_logger()
    try:
        report = runner.process(items)
    except (APIError, BrokenExecutor, CancelledError) as exc:  # the API gone, a stopped pool
        # Said in one line, and returned, not raised: Prefect would log a raise (or a Failed
        # state) with a traceback. The run stops on it and ends Failed with this reason.
        reason = failure_reason(exc) if isinstance(exc, APIError) else "the run was stopped"
        first, last = items[0].record_id, items[-1].record_id
        logger.error("ids %d-%d not finished: %s", first, last, reason)
        return ChunkReport(first_id=first, last_id=last, items=0, unfinished=reason)
    logger.info(
        "ids %d-%d: %d applied, %d unchanged, %d rejected, %d failed in %.2fs",
        report.first_id,
        report.last_id,
        report.applied,
        report.unchanged,
        report.rejected,
        report.failed,
        report.seconds,
    )
    return report


# --- The run -------------------------------------------------------------------------------


def chunk_task_runner() -> TaskRunner[PrefectFuture[Any]]:
    """The task runner of every backfill flow, chosen by `BACKFILL_TASK_RUNNER` when the flow
    module is imported.

    - `thread` (default): chunk tasks on threads of the flow's process; they wait on I/O and
      on the run's compute pool (threads, or processes for CPU-bound kinds).
    - `dask`: chunk tasks on a Dask cluster, `BACKFILL_DASK_ADDRESS` (e.g.
      `tcp://scheduler:8786`), or a local cluster per run when that is empty. Each Dask
      worker needs the checkout, the media and its own `BACKFILL_*` client settings.
    """
    choice = (os.environ.get("BACKFILL_TASK_RUNNER") or "thread").strip().lower()
    runner: TaskRunner[Any]
    if choice == "thread":
        runner = ThreadPoolTaskRunner(max_workers=MAX_CONCURRENCY)
    elif choice == "dask":
        from prefect_dask.task_runners import DaskTaskRunner

        address = os.environ.get("BACKFILL_DASK_ADDRESS") or None
        runner = DaskTaskRunner(address=address)
    else:
        raise ConfigError(f"BACKFILL_TASK_RUNNER must be 'thread' or 'dask', not {choice!r}")
    return cast(TaskRunner[PrefectFuture[Any]], runner)  # Prefect's own flows.py casts alike


def compute_workers(spec: Backfill[Any, Any]) -> int:
    return spec.workers or os.cpu_count() or 1


@contextmanager
def compute_pool(spec: Backfill[Any, Any]) -> Iterator[Executor]:
    """The run's compute pool: threads, or spawned processes each warmed once.

    When the run is stopped (cancelled: Prefect raises in the flow's thread) the pool does
    not finish its queue first: queued work is dropped, worker processes are stopped, and
    the chunks in flight end with one line each. Their records stay pending for a rerun.
    """
    workers = compute_workers(spec)
    pool: Executor
    if spec.executor == "process":
        # spawn, not fork: the flow process runs threads (Prefect, httpx), unsafe to fork.
        pool = ProcessPoolExecutor(
            max_workers=workers, mp_context=get_context("spawn"), initializer=spec.warmup
        )
        for _ in range(workers):  # start every worker now, while the run fetches a page
            pool.submit(ready)
    else:
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=spec.kind.value)
    try:
        yield pool
    except BaseException:
        _stop_now(pool)
        raise
    finally:
        pool.shutdown(wait=True)


def _stop_now(pool: Executor) -> None:
    """Drop queued work, and stop worker processes mid-item (threads finish their item)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()


def run_backfill(
    spec: Backfill[Any, Any],
    params: BackfillParams,
    *,
    settings: ClientSettings | None = None,
    client: BackfillClient | None = None,
) -> BackfillReport:
    """Run one backfill inside the calling flow; raise `BackfillFailed` if it fails."""
    settings = settings or load_settings()
    if spec.open_file is not None and not settings.MEDIA_ROOT.is_dir():
        raise ConfigError(f"BACKFILL_MEDIA_ROOT {settings.MEDIA_ROOT} is not a directory")
    if removed := sweep_downloads():
        get_run_logger().info("removed %d downloads left by killed runs", len(removed))
    with ExitStack() as stack:
        if client is None:
            client = stack.enter_context(
                BackfillClient.from_settings(settings, logger=get_run_logger())
            )
        version = spec.compute_version
        with recording(client, spec.kind, params, compute_version=version) as record:
            plan = None
            if params.plan_id is not None:
                plan, params = load_plan(client, spec, params)
                create_table_artifact(
                    key=f"{spec.kind.value}-plan",
                    table=plan_table(plan),
                    description=f"# {spec.kind.value}: plan {plan.id} ({plan.count} records)",
                )
            # Chunks on a remote task runner (Dask) compute where they run: no pool here.
            context = FlowRunContext.get()
            local = context is None or isinstance(context.task_runner, ThreadPoolTaskRunner)
            pool = stack.enter_context(compute_pool(spec)) if local else None
            runner = ChunkRunner(spec, params, settings, client, pool)
            _set_budgets(runner, stack)
            run = _Run(runner, plan)
            report = run.execute()
            report = record.report = _verified(report, runner, run.written)
    return publish_report(report, f"# {spec.kind.value} backfill: {report.status}")


def _verified(report: BackfillReport, runner: ChunkRunner, written: Reservoir) -> BackfillReport:
    """The report after verification (`verify_sample`): a mismatch fails the run.

    Nothing is verified in a dry run, or when the run failed already."""
    params = runner.params
    if params.dry_run or report.status == "failed" or not params.verify_sample:
        return report
    logger = get_run_logger()
    started = time.perf_counter()
    check: Verification = verify_sample(runner, written.draw(params.verify_sample))
    if check.sampled:
        logger.info(
            "verified %d of %d sampled records in %.2fs",
            check.ok,
            check.sampled,
            time.perf_counter() - started,
        )
    update: dict[str, Any] = {
        "verified": check.sampled,
        "verified_ok": check.ok,
        "mismatches": check.mismatches,
    }
    if check.mismatches:
        listed = "; ".join(str(m) for m in check.mismatches[:REASON_MISMATCHES])
        more = len(check.mismatches) - REASON_MISMATCHES
        update |= {
            "status": "failed",
            "reason": f"verification failed: {check.sampled - check.ok} of {check.sampled} "
            f"sampled records differ from what the API stores: {listed}"
            + (f"; and {more} more" if more > 0 else ""),
        }
    return report.model_copy(update=update)


def pause_run(
    client: BackfillClient,
    kind: BackfillKind,
    reason: str,
    top_errors: list[ErrorCount],
    timeout: int,
) -> str | None:
    """Pause the calling flow run (the circuit breaker) until it is resumed.

    The run shows Paused in the Prefect UI with `reason` as the state message, and a
    markdown artifact (key `<kind>-paused`) with the reason and the top errors. Returns None
    once resumed (Resume in the UI, or `backfill resume ID`); otherwise why the run must stop
    instead: not resumed within `timeout` s, cancelled while paused, or no Prefect server an
    operator could resume it from (a run in a temporary server: `backfill run` without
    PREFECT_API_URL).

    An in-process pause (like Prefect's `pause_flow_run`, which takes no message): the flow
    keeps its cursor, its counts and its compute pool in memory while it waits, so nothing is
    redone. (`suspend_flow_run` would end the process and rerun the flow from the start.)
    """
    logger = get_run_logger()
    context = FlowRunContext.get()
    if context is None or context.flow_run is None or not PREFECT_API_URL.value():
        return (
            f"{reason}; stopped, not paused: no Prefect server to resume this run from "
            "(PREFECT_API_URL is not set); run it again to continue"
        )
    flow_run_id = context.flow_run.id
    errors = "\n".join(f"| {e.count} | {e.error.replace('|', '/')} |" for e in top_errors)
    create_markdown_artifact(
        key=f"{kind.value}-paused",
        markdown=f"# {kind.value}: paused\n\n{reason}\n\n"
        + (f"| count | error |\n|---|---|\n{errors}\n\n" if errors else "")
        + f"Resume in the Prefect UI, or `uv run backfill resume {flow_run_id}`; not resumed "
        f"within {timeout} s, the run ends Failed.",
        description=f"{kind.value}: paused by the circuit breaker",
    )
    state: State[Any] = Paused(
        timeout_seconds=timeout + PAUSE_GRACE_SECONDS,
        pause_key=f"circuit-breaker-{random.getrandbits(64):016x}",
        message=reason,
    )
    with get_client(sync_client=True) as prefect:
        try:
            paused = propose_state_sync(prefect, state, flow_run_id=flow_run_id)
        except Abort as exc:
            return f"{reason}; stopped, Prefect refused to pause the run: {exc}"
        if not paused.is_paused():
            return f"{reason}; stopped, Prefect refused to pause the run ({paused.name})"
        record_event(client, "pause", reason)
        logger.warning("paused: %s; resume the flow run to continue", reason)
        deadline = time.monotonic() + timeout
        while True:
            time.sleep(max(0.0, min(PAUSE_POLL_SECONDS, deadline - time.monotonic())))
            now = prefect.read_flow_run(flow_run_id).state
            if now is not None and now.is_running():
                record_event(client, "resume", reason)
                logger.info("resumed: continuing where the run paused")
                return None
            if now is None or not now.is_paused():
                return f"{reason}; stopped: the run left its pause as {now.name if now else None}"
            if time.monotonic() >= deadline:
                return f"{reason}; paused and not resumed within pause_timeout={timeout} s"


def _set_budgets(runner: ChunkRunner, stack: ExitStack) -> None:
    """The run's pacer (stopped when the run ends, so no chunk waits on) and API limit."""
    rate = runner.params.max_records_per_second
    if rate is not None:
        runner.pacer = Pacer(rate)
        stack.callback(runner.pacer.stop)
    runner.api_limit = api_limit(runner.spec.kind)


class _Run:
    """The flow-side loop: page, submit, collect, stop early when something is wrong."""

    def __init__(self, runner: ChunkRunner, plan: PlanPublic | None = None) -> None:
        self.runner = runner
        self.plan = plan
        self.spec, self.params, self.client = runner.spec, runner.params, runner.client
        self.logger = get_run_logger()
        self.concurrency = self.params.concurrency or compute_workers(self.spec) + 1
        self.done: queue.SimpleQueue[PrefectFuture[ChunkReport]] = queue.SimpleQueue()
        self.in_flight = 0
        self.totals: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.stop_reason: str | None = None
        self.halted = False
        self.expected: int | None = None
        self.progress_id: Any = None
        self.progress_at = time.monotonic()
        # Circuit breaker: why the run should pause (set as a chunk comes back, acted on
        # before the next one is submitted).
        self.breaker = CircuitBreaker.from_params(self.params)
        self.pause_reason: str | None = None
        self.paused_seconds = 0.0  # not counted in the run's seconds and records/s
        # Verification: the items of chunks in flight (by task run id), and a uniform
        # sample of the records written.
        self.submitted: dict[Any, list[PendingItem]] = {}
        self.written = Reservoir()

    def execute(self) -> BackfillReport:
        started = time.perf_counter()
        self.expected = self._expected()
        self.progress_id = create_progress_artifact(
            progress=0.0,
            key=f"{self.spec.kind.value}-progress",
            description=f"{self.spec.kind.value}: records processed of "
            + (f"about {self.expected}" if self.expected is not None else "an unknown number"),
        )
        self._notify()
        try:
            for chunk in self._chunks():
                while self.in_flight >= self.concurrency:
                    self._collect_one()
                if self.pause_reason is not None and self.stop_reason is None:
                    self._pause()
                if self.stop_reason or self.halted:
                    break
                if self.runner.pool is None and self.runner.pacer is not None:
                    self.runner.pacer.take(len(chunk))  # remote chunks: paced as submitted
                future = process_chunk.submit(*self._arguments(chunk))
                self.submitted[future.task_run_id] = chunk
                future.add_done_callback(self.done.put)
                self.in_flight += 1
        except APIError as exc:
            if not is_retryable(exc):  # a wrong token or request: fail with it, not a report
                self._drain()
                raise
            self._stop(f"cannot page pending work: {exc}")
        self._drain()
        update_progress_artifact(self.progress_id, progress=100.0)
        return self._report(time.perf_counter() - started - self.paused_seconds)

    def _arguments(self, chunk: list[PendingItem]) -> tuple[ChunkRunner, list[PendingItem]]:
        """A chunk task's arguments. On the local runner they are quoted: Prefect would
        otherwise walk every item of every chunk (twice) looking for futures to wait on, and
        chunks take none. (A remote runner pickles them, and would lose the quote.)"""
        if self.runner.pool is None:
            return self.runner, chunk
        return cast(Any, quote(self.runner)), cast(Any, quote(chunk))

    def _drain(self) -> None:
        while self.in_flight:
            self._collect_one()

    def _pause(self) -> None:
        """The circuit breaker tripped: finish the chunks in flight, then pause the flow run
        until it is resumed (and go on from the cursor), or stop with the reason."""
        self._drain()
        reason, self.pause_reason = self.pause_reason, None
        if reason is None or self.stop_reason is not None:
            return
        top = [ErrorCount(error=e, count=n) for e, n in self.errors.most_common(TOP_ERRORS)]
        paused_at = time.perf_counter()
        stopped = pause_run(
            self.runner.client, self.spec.kind, reason, top, self.params.pause_timeout
        )
        self.paused_seconds += time.perf_counter() - paused_at
        if stopped is not None:
            self._stop(stopped)
            return
        self.totals["pauses"] += 1
        self.breaker.reset()

    def _expected(self) -> int | None:
        """About how many records this run will process (coverage is not filtered)."""
        if self.plan is not None and self.plan.counts is not None:
            todo = -(-self.plan.counts.todo // self.params.shard_count)
            return min(todo, self.params.limit) if self.params.limit else todo
        found = next((k for k in self.client.coverage().kinds if k.kind == self.spec.kind), None)
        if found is None:
            return None
        todo = {
            ReprocessMode.FAILED: found.failed,
            ReprocessMode.ALL: found.total,
            ReprocessMode.STALE: sum(
                n for v, n in found.versions.items() if v < self.spec.compute_version
            ),
        }.get(self.params.mode, found.pending)
        todo = -(-todo // self.params.shard_count)
        return min(todo, self.params.limit) if self.params.limit else todo

    def _chunks(self) -> Iterator[list[PendingItem]]:
        """Full chunks of `batch_size` (a page's remainder waits for the next page)."""
        size, buffer = self.params.batch_size, list[PendingItem]()
        for items in self._pages():
            buffer += items
            while len(buffer) >= size:
                yield buffer[:size]
                del buffer[:size]
        if buffer:
            yield buffer

    def _pages(self) -> Iterator[list[PendingItem]]:
        """Pending items page by page, by keyset; fetched while earlier chunks run."""
        if self.plan is not None:
            yield from self._plan_pages(self.plan.id)
            return
        p = self.params
        after_id, left = 0, p.limit
        while left is None or left > 0:
            page = self.client.pending(
                self.spec.kind,
                after_id=after_id,
                limit=min(MAX_PAGE_LIMIT, left or MAX_PAGE_LIMIT),
                where=p.pending_filter(self.spec.compute_version),
            )
            items = page.items if left is None else page.items[:left]
            yield items
            if left is not None:
                left -= len(items)
            if page.next_after_id is None or not items:
                return
            after_id = page.next_after_id

    def _plan_pages(self, plan_id: str) -> Iterator[list[PendingItem]]:
        """The plan's records page by page: those changed since the plan (revision moved)
        or done already are skipped and counted, the others are the work."""
        p = self.params
        after_id, left = 0, p.limit
        while left is None or left > 0:
            page = self.client.plan_work(
                plan_id,
                after_id=after_id,
                limit=MAX_PAGE_LIMIT,
                shard_index=p.shard_index,
                shard_count=p.shard_count,
            )
            items: list[PendingItem] = []
            for item in page.items:
                if item.status == "todo" and (left is None or len(items) < left):
                    items.append(item)
                elif item.status == "changed":
                    self.totals["changed_since_plan"] += 1
                    if self.totals["changed_since_plan"] > LOGGED_CHANGES:
                        continue
                    self.logger.info(
                        "record %d changed since plan (revision %d, planned %d): skipped",
                        item.record_id,
                        item.revision,
                        item.planned_revision,
                    )
                elif item.status == "done":
                    self.totals["skipped"] += 1
            yield items
            if left is not None:
                left -= len(items)
            if page.next_after_id is None:
                return
            after_id = page.next_after_id

    def _collect_one(self) -> None:
        while True:  # in steps, so a cancel (raised in this thread) is not held up
            try:
                future = self.done.get(timeout=1.0)
                break
            except queue.Empty:
                continue
        self.in_flight -= 1
        items = self.submitted.pop(future.task_run_id, [])
        try:
            chunk = future.result()
        except Exception as exc:  # a bug in a chunk
            self.totals["failed_chunks"] += 1
            self._stop(f"a chunk failed: {exc}")
            return
        if chunk.unfinished is not None:
            self.totals["failed_chunks"] += 1
            self._stop(f"a chunk failed: {chunk.unfinished}")
            return
        self.totals.update(
            chunks=1,
            processed=chunk.items,
            applied=chunk.applied,
            unchanged=chunk.unchanged,
            rejected=chunk.rejected,
            failed=chunk.failed,
        )
        self.errors.update(chunk.errors)
        if chunk.written:
            written = set(chunk.written)
            self.written.offer(i for i in items if i.record_id in written)
        # Failures only: a rejection is the API refusing one write (mostly a conflict: another
        # run or a person got there first), no sign that this run's environment is broken.
        tripped = self.breaker.record(chunk.items, chunk.failed)
        if tripped is not None and self.pause_reason is None:
            self.pause_reason = tripped
        if self.breaker.enabled:
            pass  # the breaker pauses; `max_failure_ratio` judges at the end
        elif not self.halted and self._failure_ratio_exceeded(at_least=self._sample()):
            # Submit no more, and end Failed with this reason: chunks never submitted are not
            # "completed", even if the final ratio happens to fall back under the limit.
            self.halted = True
            self._stop(self._ratio_reason())
        now = time.monotonic()
        if now - self.progress_at >= PROGRESS_INTERVAL:  # a round trip to Prefect each time
            self.progress_at = now
            done = self.totals["processed"]
            progress = min(99.0, 100.0 * done / self.expected) if self.expected else 99.0
            update_progress_artifact(self.progress_id, progress=progress)
        self._notify()

    def _sample(self) -> int:
        """Records to see before stopping early on the ratio: one bad chunk of one is no trend."""
        return max(self.params.batch_size, MIN_SAMPLE)

    def _failure_ratio_exceeded(self, *, at_least: int = 1) -> bool:
        processed = self.totals["processed"]
        bad = self.totals["failed"] + self.totals["rejected"]
        return processed >= at_least and bad / processed > self.params.max_failure_ratio

    def _ratio_reason(self) -> str:
        bad = self.totals["failed"] + self.totals["rejected"]
        return (
            f"{bad} of {self.totals['processed']} records failed or were rejected, "
            f"more than max_failure_ratio={self.params.max_failure_ratio:g}"
        )

    def _stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            self.logger.warning("stopping: %s", reason)

    def _notify(self) -> None:
        t = self.totals
        update = ProgressUpdate(
            kind=self.spec.kind,
            processed=t["processed"],
            expected=self.expected,
            applied=t["applied"],
            unchanged=t["unchanged"],
            rejected=t["rejected"],
            failed=t["failed"],
        )
        for listener in list(_listeners):
            listener(update)

    def _report(self, seconds: float) -> BackfillReport:
        t = self.totals
        reason = self.stop_reason
        if reason is None and self._failure_ratio_exceeded():
            reason = self._ratio_reason()
        return BackfillReport(
            kind=self.spec.kind,
            status="failed" if reason else "completed",
            reason=reason,
            dry_run=self.params.dry_run,
            flow_run_id=self.client.flow_run_id,
            processed=t["processed"],
            applied=t["applied"],
            unchanged=t["unchanged"],
            rejected=t["rejected"],
            failed=t["failed"],
            chunks=t["chunks"],
            failed_chunks=t["failed_chunks"],
            pauses=t["pauses"],
            top_errors=[
                ErrorCount(error=e, count=n) for e, n in self.errors.most_common(TOP_ERRORS)
            ],
            seconds=seconds,
            records_per_second=t["processed"] / seconds if seconds > 0 else 0.0,
            plan_id=self.plan.id if self.plan else None,
            skipped=t["skipped"],
            changed_since_plan=t["changed_since_plan"],
        )
