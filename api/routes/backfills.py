"""Work pages, coverage, and the batch-apply endpoints, one per kind."""

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query

from api.deps import (
    Admin,
    BatchDep,
    Caller,
    ReadSessionDep,
    SessionDep,
    SettingsDep,
    errors,
    known_query,
)
from api.schemas import (
    MAX_PAGE_LIMIT,
    BackfillKind,
    BatchResult,
    ClipCompileBatch,
    Coverage,
    DurationBatch,
    FailureBatch,
    FailurePage,
    HashAlgorithm,
    HashBatch,
    MediaType,
    PendingPage,
    SnrFrequencyBatch,
    Version0Batch,
)
from api.services.batches import (
    apply_durations,
    apply_hashes,
    apply_snr_frequency,
    apply_version0,
    record_failures,
    run_batch,
)
from api.services.projects import apply_clip_compile
from api.services.work import coverage, failures_page, pending_page

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


def parse_kind(kind: str) -> BackfillKind:
    try:
        return BackfillKind(kind)
    except ValueError:
        raise HTTPException(404, detail=f"Unknown backfill kind: {kind[:64]!r}") from None


@router.get("")
def read_coverage(session: ReadSessionDep, _caller: Caller, settings: SettingsDep) -> Coverage:
    """Each kind: total, done, pending, failed, quarantined."""
    return coverage(
        session=session,
        max_attempts=settings.MAX_ATTEMPTS,
        lease_seconds=settings.COMPILE_LEASE_SECONDS,
    )


@router.get(
    "/{kind}/pending",
    responses=errors(403, 404),
    dependencies=[
        known_query(
            "after_id",
            "limit",
            "media_type",
            "only_failed",
            "algorithm",
            "shard_index",
            "shard_count",
        )
    ],
)
def read_pending(
    session: ReadSessionDep,
    _caller: Admin,
    settings: SettingsDep,
    kind: KindPath,
    after_id: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_LIMIT)] = 100,
    media_type: MediaType | None = None,
    only_failed: bool = False,
    algorithm: Annotated[
        HashAlgorithm | None, Query(description="file-hashing: the algorithm wanted.")
    ] = None,
    shard_index: Annotated[int, Query(ge=0, le=10_000)] = 0,
    shard_count: Annotated[int, Query(ge=1, le=10_000)] = 1,
) -> PendingPage:
    """One page of work by id; pass `next_after_id` back as `after_id`."""
    the_kind = parse_kind(kind)
    if shard_index >= shard_count:
        raise HTTPException(422, detail="shard_index must be less than shard_count")
    if algorithm is not None and the_kind is not BackfillKind.FILE_HASHING:
        raise HTTPException(422, detail="algorithm applies to file-hashing only")
    if media_type is not None and the_kind is BackfillKind.CLIP_COMPILE:
        raise HTTPException(422, detail="media_type does not apply to clip-compile")
    return pending_page(
        session=session,
        kind=the_kind,
        after_id=after_id,
        limit=limit,
        max_attempts=settings.MAX_ATTEMPTS,
        lease_seconds=settings.COMPILE_LEASE_SECONDS,
        media_type=media_type,
        only_failed=only_failed,
        algorithm=algorithm,
        shard_index=shard_index,
        shard_count=shard_count,
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
    after_id: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_LIMIT)] = 100,
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
    return run_batch(
        session=session,
        kind=f"{the_kind.value}/failures",
        body=body,
        dry_run=body.dry_run,
        apply=lambda: record_failures(session=session, kind=the_kind, batch=body),
        result_type=BatchResult,
        token_name=caller.name,
        idempotency_key=batch.idempotency_key,
        flow_run_id=batch.flow_run_id,
        observe=batch.observe,
    )


def _add_batch_route(
    kind: BackfillKind, body_type: Any, apply: Callable[..., BatchResult], doc: str
) -> None:
    # Annotations are built at runtime here, so FastAPI sees each kind's own body model.
    def endpoint(session: SessionDep, caller: Admin, batch: BatchDep, body: Any) -> Any:
        return run_batch(
            session=session,
            kind=kind.value,
            body=body,
            dry_run=body.dry_run,
            apply=lambda: apply(session=session, batch=body),
            result_type=BatchResult,
            token_name=caller.name,
            idempotency_key=batch.idempotency_key,
            flow_run_id=batch.flow_run_id,
            observe=batch.observe,
        )

    endpoint.__annotations__ = {
        "session": SessionDep,
        "caller": Admin,
        "batch": BatchDep,
        "body": body_type,
        "return": BatchResult,
    }
    endpoint.__doc__ = doc
    name = "apply_" + kind.value.replace("-", "_")
    router.add_api_route(
        f"/{kind.value}", endpoint, methods=["POST"], name=name, responses=BATCH_ERRORS
    )


for _kind, _body, _apply, _doc in (
    (BackfillKind.MEDIA_DURATION, DurationBatch, apply_durations, "Set durations (s)."),
    (BackfillKind.FILE_HASHING, HashBatch, apply_hashes, "Set content hashes."),
    (BackfillKind.SNR_FREQUENCY, SnrFrequencyBatch, apply_snr_frequency, "Set SNR and frequency."),
    (BackfillKind.VERSION_0, Version0Batch, apply_version0, "Upgrade legacy records (CAS)."),
    (BackfillKind.CLIP_COMPILE, ClipCompileBatch, apply_clip_compile, "Record compiled videos."),
):
    _add_batch_route(_kind, _body, _apply, _doc)
