"""Database tables (SQLModel). Only the API imports this module."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlmodel import Field, SQLModel

#: 64-bit ids on PostgreSQL; SQLite needs INTEGER for its rowid primary key.
BigId = BigInteger().with_variant(Integer(), "sqlite")


#: A uri this long or longer is keyed by its start and a digest of the whole (`uri_key`).
LONG_URI = 64


def uri_key(uri: str) -> str:
    """The unique key of a media uri: the uri itself when shorter than 64 characters, else its
    first 32 characters and 32 hex digits of its sha256 (exactly 64 characters, so never the
    key of a short uri). Keys sort like their uris: a batch of neighbouring uris (a directory,
    a slice of an import) writes a few neighbouring pages of the unique index, where a digest
    for a key wrote a random page per record, and a bulk import slowed down as the table grew
    (3x the CPU per record at 300k records on SQLite; migration 0006)."""
    if len(uri) < LONG_URI:
        return uri
    digest = hashlib.sha256(uri.encode("utf-8", "surrogatepass")).hexdigest()
    return uri[:32] + digest[:32]


def utcnow() -> datetime:
    return datetime.now(UTC)


def _pk() -> Any:
    return Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))


def _ts(*, index: bool = False) -> Any:
    return Field(
        default_factory=utcnow,
        sa_column=Column(DateTime(timezone=True), nullable=False, index=index),
    )


def _fk(target: str, *, nullable: bool = True, ondelete: str | None = None) -> Any:
    return Field(
        default=None,
        sa_column=Column(BigId, ForeignKey(target, ondelete=ondelete), nullable=nullable),
    )


#: Algorithms of file-hashing: each has its own digest column (`sha256`, ...) and version.
HASH_ALGORITHMS = ("sha256", "blake2b", "sha1", "md5")
CURRENT = "schema_version >= 1"

#: The rows each media kind still has to do, one entry per partial index (`api.services.kinds`
#: renders the same predicates with literal values, so the planner of either database matches
#: the partial index); file-hashing has one per algorithm. Migration 0003 creates these
#: indexes and the `media_counts` triggers from the same text (a test checks they agree).
TODO_WHERE: dict[str, str] = {
    "media-duration": f"{CURRENT} AND duration IS NULL",
    **{f"file-hashing-{a}": f"{CURRENT} AND {a} IS NULL" for a in HASH_ALGORITHMS},
    "snr-frequency": f"{CURRENT} AND (snr IS NULL OR frequency IS NULL)",
    "version-0": "schema_version = 0",
}

#: The column holding the compute version of each media kind's value (file-hashing: per
#: algorithm, `<algorithm>_version`); each has a partial index of the rows that have a version
#: (migration 0005), so coverage counts the rows of older versions by an index range that
#: touches only them, and registering a record (every version NULL) writes none of them.
VERSION_COLUMNS = (
    "duration_version",
    "snr_version",
    "migration_version",
    *(f"{a}_version" for a in HASH_ALGORITHMS),
)


def _version_index(column: str) -> Index:
    versioned = text(f"{column} IS NOT NULL")
    return Index(f"ix_media_{column}", column, sqlite_where=versioned, postgresql_where=versioned)


def _todo_index(name: str) -> Index:
    return Index(
        f"ix_media_todo_{name.replace('-', '_')}",
        "id",
        sqlite_where=text(TODO_WHERE[name]),
        postgresql_where=text(TODO_WHERE[name]),
    )


class Media(SQLModel, table=True):
    """A file of the corpus and its derived fields."""

    __tablename__ = "media"
    #: One partial index per media kind over the rows it still has to do, in id order: a page
    #: of pending work reads only those, however many are done.
    __table_args__ = (
        *(_todo_index(name) for name in TODO_WHERE),
        *(_version_index(column) for column in VERSION_COLUMNS),
    )

    id: int | None = _pk()
    uri: str = Field(sa_column=Column(Text, nullable=False))
    #: `uri_key(uri)`: the unique key (a 4 KiB uri is too long for a btree entry).
    uri_key: str = Field(max_length=64, unique=True)
    media_type: str | None = Field(default=None, max_length=8)
    size_bytes: int | None = Field(default=None, sa_type=BigInteger)
    duration: float | None = None
    duration_version: int | None = None
    #: One digest per algorithm (file-hashing), each with the compute version that made it.
    sha256: str | None = Field(default=None, max_length=64)
    sha256_version: int | None = None
    blake2b: str | None = Field(default=None, max_length=128)
    blake2b_version: int | None = None
    sha1: str | None = Field(default=None, max_length=40)
    sha1_version: int | None = None
    md5: str | None = Field(default=None, max_length=32)
    md5_version: int | None = None
    snr: float | None = None
    frequency: float | None = None
    snr_version: int | None = None
    sample_rate: int | None = None
    channels: int | None = None
    #: No index (migration 0005): legacy rows are found by `ix_media_todo_version_0`.
    schema_version: int = 1
    #: The version-0 compute version that upgraded this record (None: registered current).
    migration_version: int | None = None
    revision: int = Field(default=1, sa_type=BigInteger)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class MediaCounts(SQLModel, table=True):
    """Media coverage counters, kept by triggers on `media` in the writing transaction
    (migrations 0002, 0003): coverage is the SUM of the rows. SQLite keeps one row (row triggers);
    PostgreSQL adds one delta row per statement (no hot row to wait on) and coverage folds them
    into one now and then (`api.services.work.fold_counts`)."""

    __tablename__ = "media_counts"

    id: int | None = _pk()
    records: int = Field(default=0, sa_type=BigInteger)
    current_records: int = Field(default=0, sa_type=BigInteger)
    legacy_records: int = Field(default=0, sa_type=BigInteger)
    duration_todo: int = Field(default=0, sa_type=BigInteger)
    sha256_todo: int = Field(default=0, sa_type=BigInteger)
    blake2b_todo: int = Field(default=0, sa_type=BigInteger)
    sha1_todo: int = Field(default=0, sa_type=BigInteger)
    md5_todo: int = Field(default=0, sa_type=BigInteger)
    snr_todo: int = Field(default=0, sa_type=BigInteger)


class BackfillFailure(SQLModel, table=True):
    """The failure ledger: one row per (kind, record); quarantined after N attempts."""

    __tablename__ = "backfill_failures"
    __table_args__ = (UniqueConstraint("kind", "record_id"),)

    id: int | None = _pk()
    kind: str = Field(max_length=32)
    record_id: int = Field(sa_type=BigInteger)
    attempts: int = 1
    last_error: str = Field(sa_column=Column(Text, nullable=False))
    updated_at: datetime = _ts()


class Tier(SQLModel, table=True):
    __tablename__ = "tiers"

    name: str = Field(primary_key=True, max_length=200)
    max_clips: int
    max_height: int
    monthly_render_seconds: float


class Owner(SQLModel, table=True):
    __tablename__ = "owners"

    id: int | None = _pk()
    name: str = Field(max_length=200, unique=True)
    tier_name: str = Field(foreign_key="tiers.name", max_length=200)


class Project(SQLModel, table=True):
    __tablename__ = "projects"

    id: int | None = _pk()
    name: str = Field(max_length=200)
    owner_id: int = _fk("owners.id", nullable=False)
    status: str = Field(max_length=16, index=True)
    reason: str | None = Field(default=None, sa_column=Column(Text))
    intro_media_id: int | None = _fk("media.id")
    outro_media_id: int | None = _fk("media.id")
    transition_media_id: int | None = _fk("media.id")
    output_media_id: int | None = _fk("media.id")
    thumbnail_uri: str | None = Field(default=None, sa_column=Column(Text))
    height: int | None = None
    fps: float | None = None
    #: The clip-compile compute version that rendered it (compiled projects).
    compile_version: int | None = None
    revision: int = Field(default=1, sa_type=BigInteger)
    created_at: datetime = _ts()
    updated_at: datetime = _ts(index=True)


class Clip(SQLModel, table=True):
    __tablename__ = "clips"
    __table_args__ = (UniqueConstraint("project_id", "position"),)

    id: int | None = _pk()
    project_id: int = _fk("projects.id", nullable=False, ondelete="CASCADE")
    position: int
    media_id: int = _fk("media.id", nullable=False)
    start: float
    end: float


class RenderUsage(SQLModel, table=True):
    """Seconds of compiled output, one row per project: never counted twice."""

    __tablename__ = "render_usage"

    id: int | None = _pk()
    project_id: int = Field(
        sa_column=Column(BigId, ForeignKey("projects.id"), nullable=False, unique=True)
    )
    owner_id: int = _fk("owners.id", nullable=False)
    seconds: float
    created_at: datetime = _ts(index=True)


class Audit(SQLModel, table=True):
    """One row per batch the API applied (dry runs included, marked)."""

    __tablename__ = "audit"

    id: int | None = _pk()
    created_at: datetime = _ts()
    token_name: str = Field(max_length=200)
    kind: str = Field(max_length=32)
    dry_run: bool
    applied: int
    unchanged: int
    rejected: int
    flow_run_id: str | None = Field(default=None, max_length=200)
    idempotency_key: str | None = Field(default=None, max_length=200)


class ApiToken(SQLModel, table=True):
    __tablename__ = "api_tokens"

    id: int | None = _pk()
    name: str = Field(max_length=200, unique=True)
    role: str = Field(max_length=16)
    token_hash: str = Field(max_length=64, unique=True)
    created_at: datetime = _ts()
    revoked_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))


class IdempotencyRecord(SQLModel, table=True):
    """The stored response of a keyed batch: a replay returns it and changes nothing."""

    __tablename__ = "idempotency_keys"

    key: str = Field(primary_key=True, max_length=200)
    request_hash: str = Field(max_length=64)
    response: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = _ts(index=True)


class Plan(SQLModel, table=True):
    """An immutable plan: the records a run of `kind` would process when it was made, each
    with its revision then (`plan_items`). A run with `plan_id` processes exactly these."""

    __tablename__ = "plans"

    id: str = Field(primary_key=True, max_length=32)
    kind: str = Field(max_length=32)
    mode: str = Field(max_length=16)
    compute_version: int
    #: The pending filters it was made with, as JSON.
    parameters: str = Field(sa_column=Column(Text, nullable=False))
    count: int = Field(sa_type=BigInteger)
    token_name: str = Field(max_length=200)
    created_at: datetime = _ts()


class PlanItem(SQLModel, table=True):
    """One planned record and its revision when planned; the key pages a plan in id order."""

    __tablename__ = "plan_items"
    #: SQLite: the key is the table (one B-tree, not a rowid table and an index beside it).
    __table_args__ = {"sqlite_with_rowid": False}

    #: No foreign key: the items are written with their plan in one transaction, and a
    #: per-row key check made a 1M-record plan take twice as long on PostgreSQL.
    plan_id: str = Field(sa_column=Column(String(32), primary_key=True))
    record_id: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    revision: int = Field(sa_type=BigInteger)


class Run(SQLModel, table=True):
    """One row per backfill flow run, whatever started it (UI, deployment, shell)."""

    __tablename__ = "runs"

    id: int | None = _pk()
    flow_run_id: str = Field(max_length=200, unique=True)
    kind: str = Field(max_length=32, index=True)
    #: The flow run's parameters, as JSON.
    parameters: str = Field(sa_column=Column(Text, nullable=False))
    mode: str | None = Field(default=None, max_length=16)
    plan_id: str | None = Field(default=None, max_length=32)
    compute_version: int | None = None
    dry_run: bool = False
    #: The flow run's attempt (Prefect's run_count): a higher one restarts the row.
    attempt: int = 1
    token_name: str = Field(max_length=200)
    #: running, completed, failed, cancelled or crashed.
    state: str = Field(max_length=16)
    reason: str | None = Field(default=None, sa_column=Column(Text))
    started_at: datetime = _ts()
    ended_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    applied: int = 0
    unchanged: int = 0
    rejected: int = 0
    failed: int = 0
    skipped: int = 0
    changed_since_plan: int = 0


class RunEvent(SQLModel, table=True):
    """Something that happened to a run: pause, resume, cancel, retry..., with its reason."""

    __tablename__ = "run_events"

    id: int | None = _pk()
    run_id: int = Field(
        sa_column=Column(
            BigId, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False, index=True
        )
    )
    event: str = Field(max_length=32)
    reason: str | None = Field(default=None, sa_column=Column(Text))
    at: datetime = _ts()


def _table(model: type[SQLModel]) -> Table:
    """A model's Core table, for the services' column-level queries."""
    table: Table = model.__table__  # type: ignore[attr-defined]
    return table


MEDIA = _table(Media)
COUNTS = _table(MediaCounts)
FAILURES = _table(BackfillFailure)
TIERS = _table(Tier)
OWNERS = _table(Owner)
PROJECTS = _table(Project)
ITEMS = _table(PlanItem)
RUNS = _table(Run)
IDEMPOTENCY = _table(IdempotencyRecord)
