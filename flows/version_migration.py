"""version-0: upgrade legacy (schema_version 0) records to version 1, client-side.

A legacy record holds an absolute path in `uri` and has no `media_type`, `size_bytes`,
`sample_rate` or `channels`. For each one the run opens the file (it must lie inside the
media root once symlinks are resolved), probes it (the type comes from the content, not the
extension) and sends the version-1 fields with `expected_revision`: a record changed since
it was paged is rejected by the API as a conflict, never overwritten, and stays pending for
the next run to redo from its new state. The fields come from the registered migration
steps (`flows.compute.migrations.STEPS`), so a future 1 -> 2 is one new step, not a new flow.

uv run backfill run version-0 --dry-run
uv run python -m flows.version_migration  # the same, with defaults
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from prefect import flow

from api.schemas import BackfillKind, MediaType, PendingItem, Version0Result, is_url
from flows.compute.errors import MediaError
from flows.compute.migrations import FileFacts, migrate
from flows.compute.probe import probe
from flows.engine import BackfillReport, chunk_task_runner, finish, run_backfill
from flows.media import local_media
from flows.settings import ClientSettings
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

#: The record fields a migration step reads (what `/backfills/version-0/pending` returns).
RECORD_FIELDS = frozenset(
    {"uri", "media_type", "size_bytes", "sample_rate", "channels", "schema_version"}
)


def resolve_legacy_path(root: Path, uri: str) -> Path:
    """The real path of a legacy record's file, or `MediaError` if it is unsafe or missing.

    `uri` is absolute (or, unusually, relative to the root). The file must be a regular
    file inside the media root once every symlink is resolved; a path outside the root is
    refused without saying whether it exists.
    """
    if not uri or "\x00" in uri or "\\" in uri:
        raise MediaError(f"{uri!r} is not a valid file path")
    real_root = root.resolve()
    named = real_root / uri  # an absolute uri replaces the root
    lexical = Path(os.path.normpath(named))
    inside = lexical.is_relative_to(real_root) or lexical.is_relative_to(os.path.abspath(root))
    try:
        path = named.resolve(strict=True)
    except FileNotFoundError:
        where = "does not exist" if inside else "is outside the media root"
        raise MediaError(f"{uri} {where}") from None
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        raise MediaError(f"{uri} cannot be resolved: {exc}") from None
    if not path.is_relative_to(real_root):
        how = " through a symlink" if inside else ""
        raise MediaError(f"{uri} is outside the media root{how}")
    if not path.is_file():
        raise MediaError(f"{uri} is not a regular file")
    return path


@contextmanager
def legacy_media(settings: ClientSettings, item: PendingItem) -> Iterator[Path]:
    """The local file of a legacy record: its resolved path (a URL is downloaded as usual)."""
    if not item.uri:
        raise MediaError(f"record {item.record_id} has no uri")
    if is_url(item.uri):
        with local_media(settings, item) as path:
            yield path
    else:
        yield resolve_legacy_path(settings.MEDIA_ROOT, item.uri)


def compute_migration(job: Job[BackfillParams]) -> Version0Result:
    """Probe one legacy record's file and build its version-1 fields (I/O bound: threads)."""
    item = job.item
    path = job.file
    facts = FileFacts(
        path=None if is_url(item.uri or "") else PurePosixPath(path),
        media_root=PurePosixPath(job.settings.MEDIA_ROOT.resolve()),
        size_bytes=path.stat().st_size,
        info=probe(path),
    )
    fields = migrate(item.model_dump(include=set(RECORD_FIELDS)), facts)
    return Version0Result.model_validate(
        {k: v for k, v in fields.items() if k in RECORD_FIELDS}
        | {"record_id": item.record_id, "expected_revision": item.revision}
    )


VERSION_0 = Backfill(
    kind=BackfillKind.VERSION_0,
    result_model=Version0Result,
    compute=compute_migration,
    executor="thread",
    open_file=legacy_media,
)


@flow(name=BackfillKind.VERSION_0.value, task_runner=chunk_task_runner(), retries=0)
def version_migration(
    batch_size: BatchSize = 100,
    limit: Limit = None,
    dry_run: bool = False,
    media_type: MediaType | None = None,
    only_failed: bool = False,
    shard_index: ShardIndex = 0,
    shard_count: ShardCount = 1,
    max_failure_ratio: Ratio = 0.1,
    concurrency: Concurrency = None,
) -> BackfillReport:
    """Upgrade every legacy (schema_version 0) record to version 1 through the API.

    Args:
        batch_size: Records per chunk task (and per POST), 1 to 1000.
        limit: Process at most this many records in this run; empty for all.
        dry_run: Compute and report what would change; write nothing.
        media_type: Only legacy records already labelled with this type (most legacy
            records have none yet); empty for all.
        only_failed: Reprocess the failure ledger (quarantined records included) only.
        shard_index: This run's shard, 0 to shard_count - 1 (records with id % count == index).
        shard_count: Split the backfill across this many runs; 1 for no sharding.
        max_failure_ratio: End Failed when more than this share of records fail (0 to 1).
        concurrency: Chunks in flight at once; empty for one more than the CPU cores.
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
    return finish(run_backfill, VERSION_0, params)


if __name__ == "__main__":
    version_migration()
