"""snr-frequency: fill `media.snr` (dB) and `media.frequency` (dominant, Hz) from each
file's audio (a video's audio track; a file without audio is a per-record failure).

The analysis is CPU-bound numpy that holds the GIL for much of its time, so it runs on a
spawned process pool, one worker per core by default, each warmed once (`warm_up`: FFT
plans, windows, soundfile's library) before its first file. The spec and its compute live
in `flows.snr_spec`, which workers import without Prefect.

uv run backfill run snr-frequency --dry-run
uv run python -m flows.snr_frequency       # the same, with defaults
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

from prefect import flow
from pydantic import Field

from api.schemas import BackfillKind, MediaType
from flows.engine import BackfillReport, chunk_task_runner, finish, run_backfill
from flows.snr_spec import SNR_FREQUENCY
from flows.spec import (
    MAX_CONCURRENCY,
    BackfillParams,
    BatchSize,
    Concurrency,
    Limit,
    Ratio,
    ShardCount,
    ShardIndex,
)

Workers = Annotated[int | None, Field(ge=1, le=MAX_CONCURRENCY)]


@flow(name=BackfillKind.SNR_FREQUENCY.value, task_runner=chunk_task_runner(), retries=0)
def snr_frequency(
    batch_size: BatchSize = 100,
    limit: Limit = None,
    dry_run: bool = False,
    media_type: MediaType | None = None,
    only_failed: bool = False,
    shard_index: ShardIndex = 0,
    shard_count: ShardCount = 1,
    max_failure_ratio: Ratio = 0.1,
    concurrency: Concurrency = None,
    workers: Workers = None,
) -> BackfillReport:
    """Measure the SNR and dominant frequency of every pending file and record them.

    Args:
        batch_size: Records per chunk task (and per POST), 1 to 1000.
        limit: Process at most this many records in this run; empty for all.
        dry_run: Compute and report what would change; write nothing.
        media_type: Only records of this type (audio or video); empty for both.
        only_failed: Reprocess the failure ledger (quarantined records included) only.
        shard_index: This run's shard, 0 to shard_count - 1 (records with id % count == index).
        shard_count: Split the backfill across this many runs; 1 for no sharding.
        max_failure_ratio: End Failed when more than this share of records fail (0 to 1).
        concurrency: Chunks in flight at once; empty for one more than the workers.
        workers: Analysis processes; empty for one per CPU core.
    """
    params = BackfillParams(
        batch_size=batch_size,
        limit=limit,
        dry_run=dry_run,
        media_type=media_type,
        only_failed=only_failed,
        shard_index=shard_index,
        shard_count=shard_count,
        max_failure_ratio=max_failure_ratio,
        concurrency=concurrency,
    )
    spec = SNR_FREQUENCY if workers is None else replace(SNR_FREQUENCY, workers=workers)
    return finish(run_backfill, spec, params)


if __name__ == "__main__":
    snr_frequency()
