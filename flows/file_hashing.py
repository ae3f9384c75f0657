"""file-hashing: fill `media.hash` and `media.hash_algorithm` from the bytes of each file.

uv run backfill run file-hashing --dry-run
uv run python -m flows.file_hashing        # the same, with defaults
"""

from __future__ import annotations

from prefect import flow

from api.schemas import BackfillKind, HashAlgorithm, HashResult, MediaType
from flows.compute.hashing import hash_file
from flows.engine import BackfillReport, chunk_task_runner, finish, run_backfill
from flows.spec import (
    Backfill,
    BackfillParams,
    BatchSize,
    Concurrency,
    Job,
    Limit,
    Ratio,
    ShardCount,
    ShardIndex,
)


class HashingParams(BackfillParams):
    """file-hashing: a record hashed with another algorithm is pending again."""

    algorithm: HashAlgorithm = HashAlgorithm.SHA256

    def pending_options(self) -> dict[str, str]:
        return {"algorithm": self.algorithm.value}


def compute_hash(job: Job[HashingParams]) -> HashResult:
    """Hash one file (hashlib releases the GIL: threads hash files on every core)."""
    algorithm = job.params.algorithm
    digest = hash_file(job.file, algorithm.value)
    return HashResult(record_id=job.item.record_id, hash=digest, algorithm=algorithm)


FILE_HASHING = Backfill(
    kind=BackfillKind.FILE_HASHING,
    result_model=HashResult,
    compute=compute_hash,
    executor="thread",
)


@flow(name=BackfillKind.FILE_HASHING.value, task_runner=chunk_task_runner(), retries=0)
def file_hashing(
    batch_size: BatchSize = 100,
    limit: Limit = None,
    dry_run: bool = False,
    media_type: MediaType | None = None,
    only_failed: bool = False,
    shard_index: ShardIndex = 0,
    shard_count: ShardCount = 1,
    max_failure_ratio: Ratio = 0.1,
    concurrency: Concurrency = None,
    algorithm: HashAlgorithm = HashAlgorithm.SHA256,
) -> BackfillReport:
    """Hash every pending file under the media root and record the digests through the API.

    Args:
        batch_size: Records per chunk task (and per POST), 1 to 1000.
        limit: Process at most this many records in this run; empty for all.
        dry_run: Compute and report what would change; write nothing.
        media_type: Only records of this type (audio or video); empty for both.
        only_failed: Reprocess the failure ledger (quarantined records included) only.
        shard_index: This run's shard, 0 to shard_count - 1 (records with id % count == index).
        shard_count: Split the backfill across this many runs; 1 for no sharding.
        max_failure_ratio: End Failed when more than this share of records fail (0 to 1).
        concurrency: Chunks in flight at once; empty for one more than the CPU cores.
        algorithm: Hash algorithm; records hashed with another one are hashed again.
    """
    params = HashingParams(
        batch_size=batch_size,
        limit=limit,
        dry_run=dry_run,
        media_type=media_type,
        only_failed=only_failed,
        shard_index=shard_index,
        shard_count=shard_count,
        max_failure_ratio=max_failure_ratio,
        concurrency=concurrency,
        algorithm=algorithm,
    )
    return finish(run_backfill, FILE_HASHING, params)


if __name__ == "__main__":
    file_hashing()
