"""The wire contract between the API and its clients: pure pydantic, no database.

`flows/` imports this module (and nothing else from `api/`), so both sides validate
the same shapes. Keep it free of sqlalchemy/sqlmodel imports: a test proves it.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    model_validator,
)
from pydantic import BaseModel as _PydanticModel
from pydantic_core import PydanticCustomError


class BaseModel(_PydanticModel):
    """Every model of the contract: validators built on first use, not at import, so a
    process pays only for the models it uses (`backfill status` uses one of fifty)."""

    model_config = ConfigDict(defer_build=True)


#: The most items one batch POST may carry.
MAX_BATCH_ITEMS = 1000
#: The most records one page of `GET /media` or `/pending` returns.
MAX_PAGE_LIMIT = 1000
#: Current schema version of a media record; 0 is the legacy layout.
CURRENT_SCHEMA_VERSION: Literal[1] = 1
#: A sane range for a signal-to-noise ratio, in dB.
SNR_RANGE_DB = (-100.0, 200.0)
#: Upper bound for any frequency we accept, in Hz (no media format samples above 1 MHz).
MAX_FREQUENCY_HZ = 1_000_000.0


class BackfillKind(StrEnum):
    """The five backfills; each value is also the endpoint path and the flow name."""

    #: Fill `media.duration` (seconds).
    MEDIA_DURATION = "media-duration"
    #: Fill the record's digest of the algorithm asked for (one digest per algorithm).
    FILE_HASHING = "file-hashing"
    #: Fill `media.snr` (dB) and `media.frequency` (Hz).
    SNR_FREQUENCY = "snr-frequency"
    #: Upgrade legacy schema-version-0 records to version 1.
    VERSION_0 = "version-0"
    #: Render queued projects into one video each.
    CLIP_COMPILE = "clip-compile"


class HashAlgorithm(StrEnum):
    MD5 = "md5"
    SHA1 = "sha1"
    SHA256 = "sha256"
    BLAKE2B = "blake2b"


#: Hex digest length of each algorithm (hashlib defaults; blake2b is 64 bytes).
HASH_HEX_LENGTH: dict[HashAlgorithm, int] = {
    HashAlgorithm.MD5: 32,
    HashAlgorithm.SHA1: 40,
    HashAlgorithm.SHA256: 64,
    HashAlgorithm.BLAKE2B: 128,
}


class ReprocessMode(StrEnum):
    """Which records a run takes (`/pending?mode=`, the flows' `mode` parameter)."""

    #: Records without the value yet (quarantined ones left out): the nightly default.
    MISSING = "missing"
    #: Records in the kind's failure ledger, quarantined ones included.
    FAILED = "failed"
    #: Every record in the kind's scope, done or not (quarantined ones left out).
    ALL = "all"
    #: Done records whose value an older compute version made (`compute_version` says which
    #: is current; quarantined ones left out).
    STALE = "stale"


#: A compute version: an integer the kind's compute declares, bumped when its results change.
ComputeVersion = Annotated[int, Field(ge=1, le=2**31 - 1)]


class ProjectStatus(StrEnum):
    #: Being edited; not offered to clip-compile.
    DRAFT = "draft"
    #: Waiting for a render.
    QUEUED = "queued"
    #: A run has claimed it (leased; a stale lease makes it pending again).
    COMPILING = "compiling"
    #: Rendered; `output_media_id` points at the output.
    COMPILED = "compiled"
    #: The last render failed; `reason` says why.
    FAILED = "failed"


MediaType = Literal["audio", "video"]

_HEX = re.compile(r"^[0-9a-f]+$")
_URL = re.compile(r"^https?://[^\s/]+(/\S*)?$", re.IGNORECASE)


def _as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; every timestamp on the wire is UTC and says so."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def is_url(uri: str) -> bool:
    """True for an http(s) URL, which clients stream instead of reading from disk."""
    return bool(_URL.match(uri))


#: A clean relative POSIX path: segments without NUL or backslash, none empty, `.` or `..`.
_CLEAN_PATH = re.compile(r"(?:(?!\.\.?/)[^/\\\x00]+/)*(?!\.\.?\Z)[^/\\\x00]+")


def _relative_uri(uri: str) -> str:
    """A current record's uri: an http(s) URL or a clean POSIX path relative to the root."""
    if _CLEAN_PATH.fullmatch(uri):  # the common case in one match; the rest says why not
        return uri
    if is_url(uri):
        return uri
    if "\x00" in uri or "\\" in uri:
        raise ValueError("uri must be a POSIX path without NUL or backslash")
    if uri.startswith("/"):
        raise ValueError("uri must be relative to the media root (or an http(s) URL)")
    parts = uri.split("/")
    if "" in parts or "." in parts or ".." in parts:
        raise ValueError("uri must be a normalised relative path: no '.', '..' or empty parts")
    return uri


def _no_nul(text: str) -> str:
    # PostgreSQL text cannot hold NUL; refuse it here rather than fail in the database.
    if "\x00" in text:
        raise ValueError("must not contain NUL characters")
    return text


def _json_integer(value: object) -> object:
    # JSON Schema's integer: 3 and 3.0 are, `true` and "3" are not (pydantic's lax int takes them).
    if isinstance(value, bool | str | bytes):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return value


#: Numbers in request bodies are typed as JSON Schema types them: `true` or "1.5" is a type
#: error, not 1.0 or 1.5. `allow_inf_nan=False` (rather than an after-validator) keeps bounds
#: added with `Field(ge=...)` in the float's own schema, so the OpenAPI document shows them.
Finite = Annotated[float, Strict(), Field(allow_inf_nan=False)]
#: Goes last in an int's `Annotated[...]`: bounds set before it stay in the OpenAPI document.
JsonInt = BeforeValidator(_json_integer)
UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]
RecordId = Annotated[
    int, Field(ge=1, le=2**63 - 1, description="Primary key of the record."), JsonInt
]
Uri = Annotated[str, Field(min_length=1, max_length=4096), AfterValidator(_no_nul)]
RelativeUri = Annotated[Uri, AfterValidator(_relative_uri)]
Revision = Annotated[int, Field(ge=0, le=2**63 - 1), JsonInt]
ErrorText = Annotated[str, Field(min_length=1, max_length=4000), AfterValidator(_no_nul)]
#: Printable: no control characters, and no U+FFFD (what undecodable bytes in a path became).
Name = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f\ufffd]+$")]


class _Strict(BaseModel):
    """Request bodies reject unknown fields, so a typo is a 422, not a silent no-op."""

    model_config = ConfigDict(extra="forbid")


T = TypeVar("T", bound=BaseModel)


# --- Batches -----------------------------------------------------------------------------


class BatchRequest(_Strict, Generic[T]):
    """Body of every batch POST: at most 1,000 items; `dry_run` validates and writes nothing."""

    items: list[T] = Field(max_length=MAX_BATCH_ITEMS)
    dry_run: bool = Field(default=False, strict=True)


class Rejection(BaseModel):
    """One item the server refused, with the reason; the rest of the batch still applies."""

    record_id: int | None = None
    reason: str


class BatchResult(BaseModel):
    """Outcome of a batch: counts, per-item rejections, and whether anything was written."""

    applied: int = 0
    unchanged: int = 0
    rejected: list[Rejection] = Field(default_factory=list)
    dry_run: bool = False


# --- Media ---------------------------------------------------------------------------------


class MediaIn(_Strict):
    """Register one file. Version 1 needs a relative uri and a media type; 0 is a legacy import."""

    uri: Uri
    media_type: MediaType | None = None
    size_bytes: Annotated[int | None, Field(ge=0, le=2**63 - 1), JsonInt] = None
    schema_version: Literal[0, 1] = CURRENT_SCHEMA_VERSION

    @model_validator(mode="after")
    def _check_current(self) -> MediaIn:
        if self.schema_version == CURRENT_SCHEMA_VERSION:
            _relative_uri(self.uri)
            if self.media_type is None:
                raise ValueError("media_type is required for schema_version 1")
        elif "\x00" in self.uri:
            raise ValueError("uri must not contain NUL")
        return self


class RegisteredMedia(BaseModel):
    """What became of one registered item: `created`, `existing` (uri known) or `rejected`."""

    uri: str
    id: int | None
    status: Literal["created", "existing", "rejected"]
    reason: str | None = None


class MediaRegisterResult(BatchResult):
    items: list[RegisteredMedia] = Field(default_factory=list)


class Digest(BaseModel):
    """One content digest of a record and the compute version of file-hashing that made it."""

    digest: str
    compute_version: int


class MediaPublic(BaseModel):
    """A media record with every field.

    `digests` holds one digest per algorithm hashed so far. `hash` and `hash_algorithm` are
    kept for older clients: the sha256 digest when there is one, else the first of blake2b,
    sha1, md5 that there is."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    uri: str
    media_type: MediaType | None
    size_bytes: int | None
    duration: float | None
    duration_version: int | None = None
    digests: dict[HashAlgorithm, Digest] = Field(default_factory=dict)
    hash: str | None = None
    hash_algorithm: HashAlgorithm | None = None
    snr: float | None
    frequency: float | None
    sample_rate: int | None
    channels: int | None
    snr_version: int | None = None
    schema_version: int
    migration_version: int | None = None
    revision: int
    created_at: UtcDatetime
    updated_at: UtcDatetime

    @model_validator(mode="before")
    @classmethod
    def _digests_of_row(cls, data: object) -> object:
        """From a database row: its per-algorithm digest columns (`sha256`, `sha256_version`,
        ...) become `digests`, and `hash`/`hash_algorithm` the preferred one of them."""
        if isinstance(data, dict) or not hasattr(data, "sha256_version"):
            return data
        fields = {name: getattr(data, name, None) for name in cls.model_fields}
        digests = {
            algorithm: Digest(
                digest=getattr(data, algorithm.value),
                compute_version=getattr(data, f"{algorithm.value}_version") or 1,
            )
            for algorithm in HASH_PREFERENCE
            if getattr(data, algorithm.value, None) is not None
        }
        first = next(iter(digests), None)
        return fields | {
            "digests": digests,
            "hash": digests[first].digest if first else None,
            "hash_algorithm": first,
        }


#: Which digest `MediaPublic.hash` shows when a record has several.
HASH_PREFERENCE = (
    HashAlgorithm.SHA256,
    HashAlgorithm.BLAKE2B,
    HashAlgorithm.SHA1,
    HashAlgorithm.MD5,
)


class MediaPage(BaseModel):
    items: list[MediaPublic]
    next_after_id: int | None


# --- Work ----------------------------------------------------------------------------------


class PendingItem(BaseModel):
    """One unit of work: for clip-compile `record_id` is a project id and `uri` is None."""

    record_id: int
    revision: int
    uri: str | None = None
    media_type: MediaType | None = None
    size_bytes: int | None = None
    sample_rate: int | None = None
    channels: int | None = None
    schema_version: int = CURRENT_SCHEMA_VERSION
    attempts: int = Field(default=0, description="Failures recorded so far for this kind.")


class PendingFilter(BaseModel):
    """Which records `/pending` offers: the query parameters besides `after_id` and `limit`,
    one model for the route, the services and the client."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: ReprocessMode = Field(
        ReprocessMode.MISSING,
        description="missing (default): not done yet; failed: the failure ledger, quarantined "
        "included; all: every record in scope; stale: done by a compute version older than "
        "`compute_version` (media-duration, file-hashing and snr-frequency).",
    )
    compute_version: ComputeVersion | None = Field(
        None, description="mode=stale: the current compute version; older values are stale."
    )
    media_type: MediaType | None = Field(None, description="Only records of this type.")
    algorithm: HashAlgorithm | None = Field(
        None, description="file-hashing: the algorithm wanted (default sha256)."
    )
    shard_index: Annotated[int, Field(ge=0, le=10_000)] = 0
    shard_count: Annotated[int, Field(ge=1, le=10_000)] = 1
    only_failed: bool | None = Field(
        None,
        description="Deprecated spelling of `mode=failed`.",
        json_schema_extra={"deprecated": True},
    )

    @model_validator(mode="after")
    def _check(self) -> PendingFilter:
        if self.shard_index >= self.shard_count:
            raise ValueError("shard_index must be less than shard_count")
        if self.only_failed:
            if self.mode not in (ReprocessMode.MISSING, ReprocessMode.FAILED):
                raise ValueError("only_failed=true is mode=failed: give one of them")
            object.__setattr__(self, "mode", ReprocessMode.FAILED)
        if self.mode is ReprocessMode.STALE and self.compute_version is None:
            raise ValueError("mode=stale needs compute_version (the current one)")
        return self

    def query(self) -> dict[str, str | int]:
        """As query parameters, defaults left out."""
        values = self.model_dump(mode="json", exclude_defaults=True, exclude={"only_failed"})
        return {name: value for name, value in values.items() if value is not None}


class PendingPage(BaseModel):
    kind: BackfillKind
    items: list[PendingItem]
    next_after_id: int | None


class FailureRecord(BaseModel):
    """One row of a kind's failure ledger: what failed, how often, and the last reason."""

    record_id: int
    uri: str | None = Field(description="The media uri; None for a clip-compile project.")
    attempts: int
    quarantined: bool
    last_error: str
    updated_at: UtcDatetime


class FailurePage(BaseModel):
    kind: BackfillKind
    items: list[FailureRecord]
    next_after_id: int | None


class KindCoverage(BaseModel):
    """Coverage of one kind (file-hashing: of one algorithm). `pending` excludes quarantined;
    `failed` counts ledger rows; `versions` counts the done records by the compute version
    that made their value (records done without a version count as the newest)."""

    kind: BackfillKind
    algorithm: HashAlgorithm | None = None
    total: int
    done: int
    pending: int
    failed: int
    quarantined: int
    versions: dict[int, int] = Field(default_factory=dict)


class Coverage(BaseModel):
    kinds: list[KindCoverage]


# --- Results per kind ----------------------------------------------------------------------


#: Each result item says which compute version made it; the API stores it beside the value.
#: Absent (an older client), it is 1.
VersionField = Annotated[ComputeVersion, JsonInt]


class DurationResult(_Strict):
    record_id: RecordId
    compute_version: VersionField = 1
    duration: Annotated[Finite, Field(ge=0, description="Seconds.")]


class HashResult(_Strict):
    record_id: RecordId
    compute_version: VersionField = 1
    hash: str = Field(min_length=32, max_length=128, description="Lowercase hex digest.")
    algorithm: HashAlgorithm

    @model_validator(mode="after")
    def _check_digest(self) -> HashResult:
        want = HASH_HEX_LENGTH[self.algorithm]
        if len(self.hash) != want or not _HEX.match(self.hash):
            raise ValueError(f"hash must be {want} lowercase hex characters for {self.algorithm}")
        return self


class SnrFrequencyResult(_Strict):
    record_id: RecordId
    compute_version: VersionField = 1
    snr: Annotated[Finite, Field(ge=SNR_RANGE_DB[0], le=SNR_RANGE_DB[1], description="dB.")]
    frequency: Annotated[
        Finite, Field(gt=0, le=MAX_FREQUENCY_HZ, description="Dominant frequency, Hz.")
    ]


class Version0Result(_Strict):
    """A legacy record upgraded to version 1; applied only if `expected_revision` still holds."""

    record_id: RecordId
    compute_version: VersionField = 1
    expected_revision: Revision
    uri: RelativeUri
    media_type: MediaType
    size_bytes: Annotated[int, Field(ge=0, le=2**63 - 1), JsonInt]
    sample_rate: Annotated[int | None, Field(gt=0, le=10_000_000), JsonInt] = None
    channels: Annotated[int | None, Field(gt=0, le=1024), JsonInt] = None
    schema_version: Literal[1] = 1


class ClipCompileResult(_Strict):
    """A rendered project: the output becomes a media record; render usage is counted once."""

    project_id: RecordId
    compute_version: VersionField = 1
    output_uri: RelativeUri
    thumbnail_uri: RelativeUri
    duration: Annotated[Finite, Field(gt=0, description="Seconds of compiled output.")]
    hash: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the output file.")
    size_bytes: Annotated[int, Field(gt=0, le=2**63 - 1), JsonInt]
    render_seconds: Annotated[Finite, Field(ge=0, description="Seconds counted against quota.")]


class FailureItem(_Strict):
    """A record the client could not process; for clip-compile `record_id` is a project id."""

    record_id: RecordId
    error: ErrorText


# --- Tiers and projects --------------------------------------------------------------------


class TierIn(_Strict):
    max_clips: Annotated[int, Field(ge=1, le=10_000), JsonInt]
    max_height: Annotated[int, Field(ge=16, le=4320), JsonInt]
    monthly_render_seconds: Annotated[Finite, Field(ge=0)]


class TierPublic(TierIn):
    model_config = ConfigDict(from_attributes=True, extra="ignore")

    name: str


class ClipIn(_Strict):
    media_id: RecordId
    start: Annotated[Finite, Field(ge=0)]
    end: Annotated[Finite, Field(gt=0)]

    @model_validator(mode="after")
    def _check_span(self) -> ClipIn:
        if self.end <= self.start:
            raise ValueError("end must be greater than start")
        return self


class ProjectCreate(_Strict):
    name: Name
    owner: Name
    tier: Name | None = Field(default=None, description="Sets the owner's tier (default free).")
    clips: list[ClipIn] = Field(default_factory=list, max_length=MAX_BATCH_ITEMS)
    intro_media_id: RecordId | None = None
    outro_media_id: RecordId | None = None
    transition_media_id: RecordId | None = None
    height: Annotated[int | None, Field(ge=16, le=4320), JsonInt] = None
    fps: Annotated[Finite, Field(ge=1, le=120)] | None = None
    status: Literal[ProjectStatus.QUEUED, ProjectStatus.DRAFT] = ProjectStatus.QUEUED


class ProjectCreated(BaseModel):
    id: int
    status: ProjectStatus


class ProjectPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    owner: str
    status: ProjectStatus
    reason: str | None
    output_media_id: int | None
    thumbnail_uri: str | None
    height: int | None
    fps: float | None
    intro_media_id: int | None
    outro_media_id: int | None
    transition_media_id: int | None
    revision: int
    created_at: UtcDatetime
    updated_at: UtcDatetime


class ProjectStatusUpdate(_Strict):
    status: ProjectStatus
    reason: ErrorText | None = None


class ContextClip(BaseModel):
    position: int
    start: float
    end: float
    media: MediaPublic


class CompilationContext(BaseModel):
    """Everything one render needs, in one call."""

    project: ProjectPublic
    clips: list[ContextClip]
    intro: MediaPublic | None
    outro: MediaPublic | None
    transition: MediaPublic | None
    tier: TierPublic
    remaining_render_seconds: float


# --- Misc ----------------------------------------------------------------------------------


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    database: bool
    version: str


class ErrorBody(BaseModel):
    detail: str


class ValidationIssue(BaseModel):
    """One problem with a request: where (`loc`), what (`msg`) and its pydantic `type`."""

    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorBody(BaseModel):
    """A 422: the issues found by request validation, or one message from a route's checks."""

    detail: list[ValidationIssue] | str


DurationBatch = BatchRequest[DurationResult]
HashBatch = BatchRequest[HashResult]
SnrFrequencyBatch = BatchRequest[SnrFrequencyResult]
Version0Batch = BatchRequest[Version0Result]
ClipCompileBatch = BatchRequest[ClipCompileResult]
FailureBatch = BatchRequest[FailureItem]
MediaRegisterBatch = BatchRequest[MediaIn]


# --- Plans and the record of every run -----------------------------------------------------


#: A plan's id: short, URL-safe.
PlanId = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_-]+$")]
Count = Annotated[int, Field(ge=0, le=2**31 - 1), JsonInt]
FlowRunId = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]


class PlanParameters(_Strict):
    """The pending filters a plan is made with (those of `/pending`), and at most how many."""

    media_type: MediaType | None = None
    algorithm: HashAlgorithm | None = Field(
        default=None, description="file-hashing: the algorithm wanted."
    )
    shard_index: Annotated[int, Field(ge=0, le=10_000), JsonInt] = 0
    shard_count: Annotated[int, Field(ge=1, le=10_000), JsonInt] = 1
    limit: Annotated[int | None, Field(ge=1, le=2**63 - 1), JsonInt] = None

    @model_validator(mode="after")
    def _check_shard(self) -> PlanParameters:
        if self.shard_index >= self.shard_count:
            raise ValueError("shard_index must be less than shard_count")
        return self


class PlanCreate(_Strict):
    """Make a plan: what a run of `kind` with these parameters would process now."""

    kind: BackfillKind
    mode: ReprocessMode = ReprocessMode.MISSING
    compute_version: ComputeVersion = Field(
        default=1, description="The compute version of the kind's flow that will apply it."
    )
    parameters: PlanParameters = Field(default_factory=PlanParameters)

    @model_validator(mode="after")
    def _check_filters(self) -> PlanCreate:
        p = self.parameters
        if p.algorithm is not None and self.kind != BackfillKind.FILE_HASHING:
            raise ValueError("algorithm applies to file-hashing only")
        if p.media_type is not None and self.kind == BackfillKind.CLIP_COMPILE:
            raise ValueError("media_type does not apply to clip-compile")
        return self


class PlanRecord(BaseModel):
    """A planned record and its revision when planned."""

    record_id: int
    revision: int


class PlanCounts(BaseModel):
    """The planned records as they are now: still to do as planned, changed since the plan
    (revision moved; a run skips them), or done already."""

    planned: int
    todo: int
    changed: int
    done: int


class PlanPublic(BaseModel):
    id: str
    kind: BackfillKind
    mode: ReprocessMode
    compute_version: int
    parameters: PlanParameters
    count: int
    token_name: str
    created_at: UtcDatetime
    counts: PlanCounts | None = Field(default=None, description="Now; in `GET /plans/{id}`.")
    #: The first records of the plan, in id order.
    items: list[PlanRecord] = Field(default_factory=list)


class PlanItemsPage(BaseModel):
    plan_id: str
    items: list[PlanRecord]
    next_after_id: int | None


class PlanWorkItem(PendingItem):
    """A planned record as a run takes it: `todo` (process it), `changed` (its revision moved
    since the plan: skipped, reported "changed since plan") or `done` (skipped)."""

    planned_revision: int
    status: Literal["todo", "changed", "done"]


class PlanWorkQuery(BaseModel):
    """A page of a plan as a run takes it: after `after_id`, `limit` at most, one shard."""

    after_id: int = Field(0, ge=0, le=2**63 - 1)
    limit: int = Field(100, ge=1, le=MAX_PAGE_LIMIT)
    shard_index: int = Field(0, ge=0, le=10_000)
    shard_count: int = Field(1, ge=1, le=10_000)


class PlanWorkPage(BaseModel):
    plan_id: str
    kind: BackfillKind
    items: list[PlanWorkItem]
    next_after_id: int | None


RunState = Literal["running", "completed", "failed", "cancelled", "crashed"]
#: What happened to a run: pause, resume, cancel, crash, retry, ...
EventName = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[a-z][a-z0-9_-]*$")]


class RunStart(_Strict):
    """A flow run starts: one row per `flow_run_id`. Sent again with the same or a lower
    `attempt` it changes nothing; a higher attempt (a Retry of the flow run) restarts it."""

    flow_run_id: FlowRunId
    kind: BackfillKind
    parameters: dict[str, Any] = Field(default_factory=dict)
    mode: ReprocessMode | None = None
    plan_id: PlanId | None = None
    compute_version: ComputeVersion | None = None
    dry_run: bool = Field(default=False, strict=True)
    attempt: Annotated[int, Field(ge=1, le=1_000_000), JsonInt] = 1


class RunEnd(_Strict):
    """A run ends: its final state, why, and its counts (a count left out is kept)."""

    state: Literal["completed", "failed", "cancelled", "crashed"]
    reason: ErrorText | None = None
    applied: Count | None = None
    unchanged: Count | None = None
    rejected: Count | None = None
    failed: Count | None = None
    skipped: Count | None = None
    changed_since_plan: Count | None = None


class RunEventIn(_Strict):
    event: EventName
    reason: ErrorText | None = None


class RunEventPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    event: str
    reason: str | None
    at: UtcDatetime


class RunPublic(BaseModel):
    id: int
    flow_run_id: str
    kind: BackfillKind
    parameters: dict[str, Any]
    mode: ReprocessMode | None
    plan_id: str | None
    compute_version: int | None
    dry_run: bool
    attempt: int
    token_name: str
    state: RunState
    reason: str | None
    started_at: UtcDatetime
    ended_at: UtcDatetime | None
    applied: int
    unchanged: int
    rejected: int
    failed: int
    skipped: int
    changed_since_plan: int
    events: list[RunEventPublic] = Field(default_factory=list)


class RunPage(BaseModel):
    """Runs newest first; pass `next_before_id` back as `before_id`."""

    items: list[RunPublic]
    next_before_id: int | None
