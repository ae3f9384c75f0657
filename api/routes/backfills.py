"""Work pages, coverage, and the batch-apply endpoints, one per kind."""

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query
from pydantic import Field
from sqlmodel import Session

from api.deps import (
    Admin,
    BatchContext,
    BatchDep,
    Caller,
    ReadSessionDep,
    SessionDep,
    SettingsDep,
    errors,
    known_query,
)
from api.models import ApiToken
from api.routes.paging import AfterId, Limit
from api.schemas import (
    MAX_PAGE_LIMIT,
    BackfillKind,
    BatchRequest,
    BatchResult,
    ClipCompileBatch,
    Coverage,
    DurationBatch,
    FailureBatch,
    FailurePage,
    HashBatch,
    PendingFilter,
    PendingPage,
    SnrFrequencyBatch,
    Version0Batch,
)
from api.services.kinds import KINDS
from api.services.ledger import record_failures
from api.services.work import (
    PendingRequest,
    check_filter,
    counts_need_folding,
    coverage,
    failures_page,
    fold_counts,
    pending_page,
)

router = APIRouter(prefix="/backfills", tags=["backfills"], responses=errors(401, 422, 503))
#: What a batch POST may answer besides 200 and the router's 401, 422 and 503.
BATCH_ERRORS = errors(400, 403, 409, 413, 415)

# A plain str validated by `parse_kind`, so an unknown kind is a 404 (not a 422); the schema
# still lists the kinds, so clients and generated tests know them.
KindPath = Annotated[
    str,
    Path(
        description="One of: " + ", ".join(k.value for k in BackfillKind),
        json_schema_extra={"enum": [k.value for k in BackfillKind]},
    ),
]


class PendingQuery(PendingFilter):
    """The query of `/pending`: the filter, and the keyset page."""

    after_id: int = Field(0, ge=0, le=2**63 - 1)
    limit: int = Field(100, ge=1, le=MAX_PAGE_LIMIT)


def parse_kind(kind: str) -> BackfillKind:
    try:
        return BackfillKind(kind)
    except ValueError:
        raise HTTPException(404, detail=f"Unknown backfill kind: {kind[:64]!r}") from None


@router.get("")
def read_coverage(
    session: ReadSessionDep, writer: SessionDep, _caller: Caller, settings: SettingsDep
) -> Coverage:
    """Each kind (file-hashing: each algorithm hashed): total, done, pending, failed,
    quarantined, and the done records by compute version."""
    result = coverage(
        session=session,
        max_attempts=settings.MAX_ATTEMPTS,
        lease_seconds=settings.COMPILE_LEASE_SECONDS,
    )
    if counts_need_folding(session):  # PostgreSQL's counter delta rows: keep the next read short
        fold_counts(writer)
    return result


@router.get(
    "/{kind}/pending",
    responses=errors(403, 404),
    dependencies=[known_query(*PendingQuery.model_fields)],
)
def read_pending(
    session: ReadSessionDep,
    _caller: Admin,
    settings: SettingsDep,
    kind: KindPath,
    query: Annotated[PendingQuery, Query()],
) -> PendingPage:
    """One page of work by id; pass `next_after_id` back as `after_id`. `mode` says which
    records: missing (default), failed, all, or stale (with `compute_version`);
    `only_failed=true` is the deprecated spelling of `mode=failed`."""
    the_kind = parse_kind(kind)
    where = PendingFilter.model_validate(query.model_dump(exclude={"after_id", "limit"}))
    check_filter(the_kind, where)
    return pending_page(
        session,
        PendingRequest(
            kind=the_kind,
            after_id=query.after_id,
            limit=query.limit,
            max_attempts=settings.MAX_ATTEMPTS,
            lease_seconds=settings.COMPILE_LEASE_SECONDS,
            where=where,
        ),
    )


@router.get(
    "/{kind}/failures",
    responses=errors(404),
    dependencies=[known_query("after_id", "limit", "quarantined_only")],
)
def read_failures(
    session: ReadSessionDep,
    _caller: Caller,
    settings: SettingsDep,
    kind: KindPath,
    after_id: AfterId = 0,
    limit: Limit = 100,
    quarantined_only: bool = False,
) -> FailurePage:
    """The failure ledger: each failed record, its attempts and its last error."""
    return failures_page(
        session=session,
        kind=parse_kind(kind),
        after_id=after_id,
        limit=limit,
        max_attempts=settings.MAX_ATTEMPTS,
        quarantined_only=quarantined_only,
    )


@router.post("/{kind}/failures", responses=BATCH_ERRORS | errors(404))
def create_failures(
    session: SessionDep,
    caller: Admin,
    batch: BatchDep,
    kind: KindPath,
    body: FailureBatch,
) -> BatchResult:
    """Record per-record failures; for clip-compile the project becomes `failed`."""
    the_kind = parse_kind(kind)
    return batch.run(
        session=session,
        caller=caller,
        kind=f"{the_kind}/failures",
        body=body,
        apply=lambda: record_failures(
            session=session, kind=the_kind, batch=body, refuse=KINDS[the_kind].refuse
        ),
        result_type=BatchResult,
    )


def _apply(
    kind: BackfillKind,
    session: Session,
    caller: ApiToken,
    batch: BatchContext,
    body: BatchRequest[Any],
) -> BatchResult:
    """Apply one batch of `kind`'s results, audited and exactly once per Idempotency-Key."""
    return batch.run(
        session=session,
        caller=caller,
        kind=kind.value,
        body=body,
        apply=lambda: KINDS[kind].apply(session=session, batch=body),
        result_type=BatchResult,
    )


@router.post("/media-duration", responses=BATCH_ERRORS)
def apply_media_duration(
    session: SessionDep, caller: Admin, batch: BatchDep, body: DurationBatch
) -> BatchResult:
    """Set durations (s)."""
    return _apply(BackfillKind.MEDIA_DURATION, session, caller, batch, body)


@router.post("/file-hashing", responses=BATCH_ERRORS)
def apply_file_hashing(
    session: SessionDep, caller: Admin, batch: BatchDep, body: HashBatch
) -> BatchResult:
    """Set content hashes."""
    return _apply(BackfillKind.FILE_HASHING, session, caller, batch, body)


@router.post("/snr-frequency", responses=BATCH_ERRORS)
def apply_snr_frequency(
    session: SessionDep, caller: Admin, batch: BatchDep, body: SnrFrequencyBatch
) -> BatchResult:
    """Set SNR and frequency."""
    return _apply(BackfillKind.SNR_FREQUENCY, session, caller, batch, body)


@router.post("/version-0", responses=BATCH_ERRORS)
def apply_version_0(
    session: SessionDep, caller: Admin, batch: BatchDep, body: Version0Batch
) -> BatchResult:
    """Upgrade legacy records (CAS)."""
    return _apply(BackfillKind.VERSION_0, session, caller, batch, body)


@router.post("/clip-compile", responses=BATCH_ERRORS)
def apply_clip_compile(
    session: SessionDep, caller: Admin, batch: BatchDep, body: ClipCompileBatch
) -> BatchResult:
    """Record compiled videos."""
    return _apply(BackfillKind.CLIP_COMPILE, session, caller, batch, body)
