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

from pydantic import Field

from api.schemas import (
    BackfillKind,
    MediaType,
    PendingItem,
    ReprocessMode,
    Version0Result,
    is_url,
)
from flows.compute.errors import MediaError
from flows.compute.migrations import COMPUTE_VERSION, FileFacts, migrate
from flows.compute.probe import probe
from flows.engine import BackfillReport, backfill_flow, run_backfill
from flows.media import local_media
from flows.settings import ClientSettings
from flows.spec import Backfill, BackfillParams, Job, SameFields

#: The record fields a migration step reads (what `/backfills/version-0/pending` returns) and
#: writes, and verification compares.
RECORD_FIELDS = ("uri", "media_type", "size_bytes", "sample_rate", "channels", "schema_version")


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
    compute_version=COMPUTE_VERSION,
    open_file=legacy_media,
    compare=SameFields(RECORD_FIELDS),
)


class Version0Params(BackfillParams):
    """version-0: most legacy records have no media type yet."""

    # The upgrade overwrites its own input: there is nothing to recompute (all, stale).
    modes = frozenset({ReprocessMode.MISSING, ReprocessMode.FAILED})

    media_type: MediaType | None = Field(
        None,
        description="Only legacy records already labelled with this type (most legacy "
        "records have none yet); empty for all.",
    )


@backfill_flow(BackfillKind.VERSION_0, Version0Params)
def version_migration(params: Version0Params) -> BackfillReport:
    """Upgrade every legacy (schema_version 0) record to version 1 through the API."""
    return run_backfill(VERSION_0, params)


if __name__ == "__main__":
    version_migration()
