"""What a backfill kind is, for the engine: its `Backfill` spec, shared parameters, one `Job`.

A kind plugs into the one engine (`flows.engine.run_backfill`) by declaring::

    SPEC = Backfill(
        kind=BackfillKind.FILE_HASHING,
        result_model=HashResult,              # validated before anything is sent
        compute=compute_hash,                 # Job -> result; raise MediaError for a bad file
        executor="thread",                    # or "process" for CPU-bound Python (GIL held)
    )

and, optionally, a `claim` hook (a per-item step through the API client before compute;
may return `Skip`). Compute makes no API calls; in a dry run it may return `Planned`.

Prefect-free on purpose: process-pool workers import this module, `run_item` and the spec's
`compute` (keep a process kind's compute in a module without Prefect, too), and should not
pay for Prefect on start-up.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from api.schemas import (
    MAX_BATCH_ITEMS,
    BackfillKind,
    MediaPublic,
    MediaType,
    PendingFilter,
    PendingItem,
    PlanId,
    ReprocessMode,
)
from flows.compute.errors import MediaError
from flows.media import local_media
from flows.settings import ClientSettings

if TYPE_CHECKING:
    from flows.client import BackfillClient

#: Most chunk tasks a run keeps in flight (the task runner's thread count).
MAX_CONCURRENCY = 64

# Parameter types: their constraints live here once.
BatchSize = Annotated[int, Field(ge=1, le=MAX_BATCH_ITEMS)]
Limit = Annotated[int | None, Field(ge=1)]
#: Most shards one backfill may be split into (the API's `/pending` allows as many).
MAX_SHARDS = 10_000
ShardIndex = Annotated[int, Field(ge=0, le=MAX_SHARDS)]
ShardCount = Annotated[int, Field(ge=1, le=MAX_SHARDS)]
#: Most shard child runs one run may fan out into (each is a flow run on the work pool).
MAX_FAN_OUT = 256
Shards = Annotated[int, Field(ge=1, le=MAX_FAN_OUT)]
Ratio = Annotated[float, Field(ge=0.0, le=1.0)]
#: Records in the circuit breaker's sliding window (0: no window).
PauseWindow = Annotated[int, Field(ge=0, le=1_000_000)]
#: Consecutive chunks failing outright before the circuit breaker pauses (0: never).
PauseChunks = Annotated[int, Field(ge=0, le=10_000)]
#: Seconds a paused run waits for Resume (at most 30 days).
PauseTimeout = Annotated[int, Field(ge=1, le=30 * 86_400)]
Concurrency = Annotated[int | None, Field(ge=1, le=MAX_CONCURRENCY)]
RecordsPerSecond = Annotated[float | None, Field(gt=0)]


class BackfillParams(BaseModel):
    """The parameters every backfill flow takes; a kind with options subclasses it.

    The one declaration of a flow's parameters: `flows.engine.backfill_flow` makes the
    flow's signature and docstring (the Prefect UI form) from these fields, and
    `backfill run KIND` its options. A subclass may change a default or a description
    by declaring the field again.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Fields of this model that are not parameters of the flow (a kind without them).
    not_parameters: ClassVar[frozenset[str]] = frozenset()
    #: The reprocess modes this kind takes (the API's `/pending` agrees).
    modes: ClassVar[frozenset[ReprocessMode]] = frozenset(ReprocessMode)

    batch_size: BatchSize = Field(
        100, description="Records per chunk task (and per POST), 1 to 1000."
    )
    limit: Limit = Field(
        None, description="Process at most this many records in this run; empty for all."
    )
    dry_run: bool = Field(False, description="Compute and report what would change; write nothing.")
    media_type: MediaType | None = Field(
        None, description="Only records of this type (audio or video); empty for both."
    )
    mode: ReprocessMode = Field(
        ReprocessMode.MISSING,
        description="Which records: missing (not done yet), failed (the failure ledger, "
        "quarantined included), all (every record again), stale (done by an older compute "
        "version of this kind).",
    )
    only_failed: bool = Field(
        False,
        description="Deprecated: the same as mode=failed (kept for existing scripts).",
        json_schema_extra={"deprecated": True},
    )
    shard_index: ShardIndex = Field(
        0,
        description="This run's shard, 0 to shard_count - 1 (records with id % count == index).",
    )
    shard_count: ShardCount = Field(
        1, description="Split the backfill across this many runs; 1 for no sharding."
    )
    shards: Shards = Field(
        1,
        description="Fan this run out into this many shard runs of its deployment, taken by "
        "any worker of the pool; 1 to run here (see docs/operations.md).",
    )
    max_failure_ratio: Ratio = Field(
        0.1, description="End Failed when more than this share of records fail (0 to 1)."
    )
    concurrency: Concurrency = Field(
        None, description="Chunks in flight at once; empty for one more than the CPU cores."
    )
    plan_id: PlanId | None = Field(
        None,
        description="Apply this plan (`backfill plan`): exactly its records, each skipped if "
        "it changed since the plan or is done; empty for the pending work.",
    )
    # --- circuit breaker and verification (flows.breaker, flows.verify) ---
    pause_window: PauseWindow = Field(
        200,
        description="Circuit breaker: pause the run (Resume in the Prefect UI continues it) "
        "when more than pause_failure_ratio of the last this many records failed; 0 turns "
        "this check off.",
    )
    pause_failure_ratio: Ratio = Field(
        0.5,
        description="Circuit breaker: the share of failed records in the window above which "
        "the run pauses (0 to 1).",
    )
    pause_failed_chunks: PauseChunks = Field(
        3,
        description="Circuit breaker: pause after this many consecutive chunks in which "
        "every record failed; 0 turns this check off.",
    )
    pause_timeout: PauseTimeout = Field(
        12 * 3600,
        description="Seconds a paused run waits for Resume before it ends Failed.",
    )
    verify_sample: Ratio = Field(
        0.01,
        description="After the run, recompute this share of the records it applied (at "
        "most 100) and end Failed if the API stores other values; 0 verifies nothing.",
    )
    max_records_per_second: RecordsPerSecond = Field(
        None,
        description="Pace this run to at most this many records a second, over all its "
        "chunks (shared out between its shards); empty for no limit.",
    )

    @model_validator(mode="after")
    def _check_shard(self) -> BackfillParams:
        if self.only_failed:  # the old spelling of mode=failed
            if self.mode not in (ReprocessMode.MISSING, ReprocessMode.FAILED):
                raise ValueError(f"only_failed means mode=failed, not mode={self.mode}")
            object.__setattr__(self, "mode", ReprocessMode.FAILED)
            object.__setattr__(self, "only_failed", False)
        if self.mode not in self.modes:
            able = " or ".join(sorted(self.modes))
            raise ValueError(f"mode {self.mode} does not apply to this backfill (takes {able})")
        if self.shard_index >= self.shard_count:
            raise ValueError("shard_index must be less than shard_count")
        if self.shards > 1 and self.shard_count > 1:
            raise ValueError("shards fans a whole run out: leave shard_count at 1 with it")
        if self.shards > 1 and self.limit is not None and self.limit < self.shards:
            raise ValueError("limit must be at least shards (each shard takes a share of it)")
        return self

    def pending_options(self) -> dict[str, str]:
        """Kind options sent as query parameters of `/pending` (none for the base kinds)."""
        return {}

    def pending_filter(self, compute_version: int) -> PendingFilter:
        """What this run asks `/pending` for; `compute_version` is the kind's current one."""
        return PendingFilter.model_validate(
            {
                "mode": self.mode,
                "compute_version": compute_version if self.mode is ReprocessMode.STALE else None,
                "media_type": self.media_type,
                "shard_index": self.shard_index,
                "shard_count": self.shard_count,
                **self.pending_options(),
            }
        )


P = TypeVar("P", bound=BackfillParams)
R = TypeVar("R", bound=BaseModel)


@dataclass(frozen=True)
class Job(Generic[P]):
    """Everything `compute` gets for one pending item."""

    item: PendingItem
    params: P
    settings: ClientSettings
    #: The local file (a URL is streamed to a temporary file first); None if the spec
    #: opens no file.
    path: Path | None = None
    #: What the spec's `claim` fetched for this item through the API (clip-compile: the
    #: project's compilation context); None for a spec without `claim`.
    context: BaseModel | None = None

    @property
    def file(self) -> Path:
        """The local file; a spec with `open_file=None` has none."""
        if self.path is None:
            raise RuntimeError(f"record {self.item.record_id}: this backfill opens no file")
        return self.path


@dataclass(frozen=True)
class Skip:
    """From a spec's `claim`: leave the item alone (another run holds it). Not a failure:
    counted as unchanged, nothing posted."""

    reason: str


class Planned(BaseModel):
    """From `compute` in a dry run that cannot build the result without its effect (a render):
    the item checked out and would apply. Counted as would-apply, nothing posted."""

    model_config = ConfigDict(frozen=True)

    note: str


class Mismatch(BaseModel):
    """A verified record whose stored value differs from what recomputing it gives."""

    model_config = ConfigDict(frozen=True)

    record_id: int
    field: str
    stored: Any = None
    recomputed: Any = None

    def __str__(self) -> str:
        return (
            f"record {self.record_id} {self.field}: stored {self.stored!r}, "
            f"recomputed {self.recomputed!r}"
        )


def differences(
    record_id: int,
    stored: Mapping[str, Any],
    recomputed: Mapping[str, Any],
    tolerances: Mapping[str, float] | None = None,
) -> list[Mismatch]:
    """The fields of `recomputed` that `stored` does not hold; a number with a tolerance in
    `tolerances` matches within it (relative or absolute, whichever is looser)."""
    found = []
    for field, value in recomputed.items():
        have = stored.get(field)
        tolerance = (tolerances or {}).get(field)
        if (
            tolerance is not None
            and isinstance(have, int | float)
            and isinstance(value, int | float)
        ):
            same = math.isclose(have, value, rel_tol=tolerance, abs_tol=tolerance)
        else:
            same = have == value
        if not same:
            found.append(Mismatch(record_id=record_id, field=field, stored=have, recomputed=value))
    return found


@dataclass(frozen=True)
class SameFields:
    """A `compare` hook: these fields of a result equal the stored record's, numbers within
    their tolerance. `stored_as` names a stored field that is called otherwise."""

    fields: tuple[str, ...]
    tolerances: tuple[tuple[str, float], ...] = ()
    stored_as: tuple[tuple[str, str], ...] = ()

    def __call__(self, result: BaseModel, stored: MediaPublic) -> list[Mismatch]:
        got, have = result.model_dump(mode="json"), stored.model_dump(mode="json")
        names = dict(self.stored_as)
        return differences(
            stored.id,
            {field: have.get(names.get(field, field)) for field in self.fields},
            {field: got[field] for field in self.fields},
            dict(self.tolerances),
        )


#: A kind's own verification of sampled records (see `Backfill.verify`).
Verifier = Callable[["BackfillClient", ClientSettings, list[PendingItem]], list[Mismatch]]


#: Opens the local file of a pending item for the length of `compute` (see flows.media).
Opener = Callable[[ClientSettings, PendingItem], AbstractContextManager[Path]]


@dataclass(frozen=True)
class Backfill(Generic[P, R]):
    """One kind, as the engine sees it. Picklable when its callables are module-level."""

    kind: BackfillKind
    #: The wire model of one result; every computed value is validated against it.
    result_model: type[R]
    #: Compute one item, without API calls. Raise `MediaError` for a bad record: it becomes a
    #: per-record failure and the chunk goes on. Return a `result_model` (or a dict of its
    #: fields), or `Planned` in a dry run.
    compute: Callable[[Job[P]], R | dict[str, Any] | Planned]
    #: The version of `compute` (its module's `COMPUTE_VERSION`): bump it when results change.
    #: Every result carries it; `mode=stale` redoes the records of older versions.
    compute_version: int = 1
    #: "thread" for I/O and GIL-releasing work (hashlib, file headers, subprocesses);
    #: "process" for CPU-bound Python (librosa): a spawned process pool, one per run.
    executor: Literal["thread", "process"] = "thread"
    #: How an item's file is opened; None when items are not files (clip-compile projects).
    open_file: Opener | None = local_media
    #: Runs once in each worker process before its first item (imports, caches).
    warmup: Callable[[], None] | None = None
    #: Compute workers (threads or processes); default: one per CPU core.
    workers: int | None = None
    #: Runs per item before `compute`, in the chunk's thread with the run's one API client:
    #: claims the item for this run and fetches what compute needs (into `Job.context`), or
    #: returns `Skip`. Raise `MediaError` for a bad item; compute itself makes no API calls.
    claim: Callable[[BackfillClient, Job[P]], Job[P] | Skip] | None = None
    #: Verification (`verify_sample`): compare a recomputed result with the stored media
    #: record of its item; the fields that differ (see `differences`). None: not verified
    #: by recomputing.
    compare: Callable[[R, MediaPublic], list[Mismatch]] | None = None
    #: Verification done another way, instead of recomputing and `compare` (clip-compile
    #: checks the output file against its record rather than rendering again): gets the run's
    #: client, settings and the sampled items, returns the mismatches.
    verify: Verifier | None = None


@dataclass(frozen=True)
class ItemOutcome:
    """One item: a validated result, the reason it failed, or why nothing is posted."""

    record_id: int
    result: BaseModel | None = None
    error: str | None = None
    #: Left alone: `claim` returned `Skip` with this reason.
    skipped: str | None = None
    #: A dry run's `Planned` note: would apply.
    planned: str | None = None


def ready() -> None:
    """A no-op for a new worker process: submitting it starts the pool early."""


def run_item(spec: Backfill[P, R], job: Job[P]) -> ItemOutcome:
    """Compute one item; a bad record comes back as `error`, never as an exception."""
    item = job.item
    path: Path | None = None
    try:
        if spec.open_file is None:
            value = spec.compute(job)
        else:
            with spec.open_file(job.settings, item) as path:
                value = spec.compute(replace(job, path=path))
        if isinstance(value, Planned):
            return ItemOutcome(item.record_id, planned=value.note)
        result = spec.result_model.model_validate(value)
        if "compute_version" in spec.result_model.model_fields:
            result = result.model_copy(update={"compute_version": spec.compute_version})
        return ItemOutcome(item.record_id, result=result)
    except MediaError as exc:
        reason = str(exc) or "unreadable media"
    except OSError as exc:
        reason = f"{item.uri}: {exc.strerror or exc}"
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        detail = f"{where}: {first['msg']}" if where else first["msg"]
        reason = f"computed {spec.result_model.__name__} is invalid: {detail}"
    return ItemOutcome(item.record_id, error=public_reason(reason, job.settings, item.uri, path))


def public_reason(reason: str, settings: ClientSettings, uri: str | None, path: Path | None) -> str:
    """A failure reason as the ledger shows it: files named as record uris (relative to the
    media root, or the URL), never by a path of this worker (readers can see the ledger)."""
    if path is not None and uri:
        reason = reason.replace(str(path), uri)
        if path.name != uri and reason.startswith(f"{path.name} "):  # "<name> is silent"
            reason = uri + reason[len(path.name) :]
    for root in {str(settings.MEDIA_ROOT.absolute()), _real(settings.MEDIA_ROOT)}:
        reason = reason.replace(root.rstrip("/") + "/", "")
        reason = reason.replace(root, "BACKFILL_MEDIA_ROOT")
    return reason


def _real(path: Path) -> str:
    try:
        return str(path.resolve())
    except OSError:
        return str(path.absolute())


def run_items(spec: Backfill[P, R], jobs: list[Job[P]]) -> list[ItemOutcome]:
    """`run_item` over a slice of a chunk, in order (one hand-over to a pool per slice)."""
    return [run_item(spec, job) for job in jobs]
