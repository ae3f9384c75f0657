"""Each backfill kind, declared once: the result a flow sends, the function that applies a
batch of them, which rows are still to do, and how its coverage is counted.

Routes and services read `KINDS`; adding a kind is one entry here, one route and its
result model in `api.schemas`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from pydantic import BaseModel
from sqlalchemy import ColumnElement, and_, literal_column, or_, true

from api.models import FAILURES, MEDIA, PROJECTS, utcnow
from api.schemas import (
    BackfillKind,
    BatchResult,
    ClipCompileResult,
    DurationResult,
    HashAlgorithm,
    HashResult,
    ProjectStatus,
    ReprocessMode,
    SnrFrequencyResult,
    Version0Result,
)
from api.services.batches import apply_durations, apply_hashes, apply_snr_frequency, apply_version0
from api.services.ledger import Refuse, unknown_media
from api.services.projects import apply_clip_compile, fail_projects

#: Rows to do, given the hash algorithm wanted (file-hashing) and the compile lease (seconds).
Todo = Callable[[HashAlgorithm, float], ColumnElement[bool]]
#: A coverage predicate, given the kind's `todo` rows.
Predicate = Callable[[ColumnElement[bool]], ColumnElement[bool]]
#: The column that holds the compute version of the kind's value (given the algorithm).
VersionColumn = Callable[[HashAlgorithm], Any]

#: Modes every kind takes; `all` and `stale` recompute done values, which only the kinds that
#: fill plain values can (version-0 overwrites its input, clip-compile's renders are counted).
BASIC_MODES = frozenset({ReprocessMode.MISSING, ReprocessMode.FAILED})
ALL_MODES = frozenset(ReprocessMode)

#: What `/pending` sends of a media record besides its id and revision.
MEDIA_DETAILS = ("uri", "media_type", "size_bytes", "sample_rate", "channels", "schema_version")


# Literal values, not bind parameters, in every pending predicate: the planner matches a
# partial index (`api.models.TODO_WHERE`) only against values it can see when it plans.


def _current() -> ColumnElement[bool]:
    current: ColumnElement[bool] = MEDIA.c.schema_version >= literal_column("1")
    return current


def _hash_todo(algorithm: HashAlgorithm, _lease: float) -> ColumnElement[bool]:
    """No digest of the algorithm wanted yet (digests of other algorithms do not count)."""
    return and_(_current(), MEDIA.c[HashAlgorithm(algorithm).value].is_(None))


def _not_done(todo: ColumnElement[bool]) -> ColumnElement[bool]:
    return ~todo


def _ledger_failed(todo: ColumnElement[bool]) -> ColumnElement[bool]:
    return and_(FAILURES.c.id.is_not(None), todo)


@dataclass(frozen=True)
class KindSpec:
    """How the server does one backfill kind; the defaults are those of a kind that fills
    media records: current ones, done when no longer to do, failed when to do with a ledger row."""

    #: One record's result, as the flow sends it (a batch is `BatchRequest[item]`).
    item: type[BaseModel]
    #: Applies a batch in the caller's transaction: `apply(session=..., batch=...)`.
    apply: Callable[..., BatchResult]
    #: Rows still to do: the pending filter.
    todo: Todo
    #: The rows the kind works on: `media`, or `projects` for clip-compile.
    table: Any = MEDIA
    #: Rows the kind is about at all: its coverage total.
    scope: ColumnElement[bool] = field(default_factory=_current)
    #: Rows done (coverage).
    done: Predicate = _not_done
    #: Rows that failed and are not done (coverage; `/pending?mode=failed`).
    failed: Predicate = _ledger_failed
    #: Which failure reports it refuses, and what else a failure changes.
    refuse: Refuse = unknown_media
    #: Query filters of `/pending` that apply to this kind.
    filters: frozenset[str] = frozenset({"media_type"})
    #: Columns `/pending` sends besides id and revision.
    details: tuple[str, ...] = MEDIA_DETAILS
    #: Coverage from the `media_counts` counters instead of a scan: the counter of the rows in
    #: scope and the counter of those to do (given the algorithm, for file-hashing).
    counted: Callable[[HashAlgorithm], tuple[str, str]] | None = None
    #: Where the compute version of a done value is stored.
    version: VersionColumn | None = None
    #: The reprocess modes `/pending` takes for this kind.
    modes: frozenset[ReprocessMode] = ALL_MODES


def _compile_todo(_: HashAlgorithm, lease_seconds: float) -> ColumnElement[bool]:
    """Queued projects, and compiling ones whose lease has expired."""
    stale = utcnow() - timedelta(seconds=lease_seconds)
    return or_(
        PROJECTS.c.status == ProjectStatus.QUEUED.value,
        and_(PROJECTS.c.status == ProjectStatus.COMPILING.value, PROJECTS.c.updated_at < stale),
    )


def _project_is(status: ProjectStatus) -> Predicate:
    return lambda _todo: PROJECTS.c.status == status.value


KINDS: dict[BackfillKind, KindSpec] = {
    BackfillKind.MEDIA_DURATION: KindSpec(
        DurationResult,
        apply_durations,
        lambda _alg, _lease: and_(_current(), MEDIA.c.duration.is_(None)),
        counted=lambda _alg: ("current_records", "duration_todo"),
        version=lambda _alg: MEDIA.c.duration_version,
    ),
    BackfillKind.FILE_HASHING: KindSpec(
        HashResult,
        apply_hashes,
        _hash_todo,
        counted=lambda alg: ("current_records", f"{HashAlgorithm(alg).value}_todo"),
        version=lambda alg: MEDIA.c[f"{HashAlgorithm(alg).value}_version"],
        filters=frozenset({"media_type", "algorithm"}),
    ),
    BackfillKind.SNR_FREQUENCY: KindSpec(
        SnrFrequencyResult,
        apply_snr_frequency,
        lambda _alg, _lease: and_(
            _current(), or_(MEDIA.c.snr.is_(None), MEDIA.c.frequency.is_(None))
        ),
        counted=lambda _alg: ("current_records", "snr_todo"),
        version=lambda _alg: MEDIA.c.snr_version,
    ),
    # Legacy records: every record is in scope, the schema_version 0 ones are to do.
    BackfillKind.VERSION_0: KindSpec(
        Version0Result,
        apply_version0,
        lambda _alg, _lease: MEDIA.c.schema_version == literal_column("0"),
        counted=lambda _alg: ("records", "legacy_records"),
        version=lambda _alg: MEDIA.c.migration_version,
        scope=true(),
        modes=BASIC_MODES,
    ),
    BackfillKind.CLIP_COMPILE: KindSpec(
        item=ClipCompileResult,
        apply=apply_clip_compile,
        table=PROJECTS,
        scope=PROJECTS.c.status != ProjectStatus.DRAFT.value,
        todo=_compile_todo,
        done=_project_is(ProjectStatus.COMPILED),
        # A failed project is `failed` even when failed by hand, without a ledger row.
        failed=_project_is(ProjectStatus.FAILED),
        refuse=fail_projects,
        filters=frozenset(),
        details=(),
        version=lambda _alg: PROJECTS.c.compile_version,
        modes=BASIC_MODES,
    ),
}


def kinds_with(filter_name: str) -> list[BackfillKind]:
    """The kinds whose `/pending` takes this query filter."""
    return [kind for kind, spec in KINDS.items() if filter_name in spec.filters]
