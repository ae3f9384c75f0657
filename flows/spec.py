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

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from api.schemas import (
    MAX_BATCH_ITEMS,
    BackfillKind,
    MediaType,
    PendingFilter,
    PendingItem,
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
Concurrency = Annotated[int | None, Field(ge=1, le=MAX_CONCURRENCY)]


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

    @model_validator(mode="after")
    def _check_shard(self) -> BackfillParams:
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
