"""Schema migrations of media records, as registered steps: pure functions, no I/O.

`STEPS[n]` upgrades a record's fields from schema_version n to n + 1, given what the client
found out about the record's file (`FileFacts`: the probing and `stat` are the caller's).
`migrate` applies the chain from the record's version up to the current one, so a future
1 -> 2 is one new function registered as `STEPS[1]`, not a new flow::

    def step_1_to_2(record: Fields, facts: FileFacts) -> Fields:
        return {"schema_version": 2, ...}

    STEPS[1] = step_1_to_2

A record that cannot be migrated (its file is outside the media root, say) raises
`MediaError`: the engine turns it into a per-record failure and the chunk goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from api.schemas import CURRENT_SCHEMA_VERSION, is_url
from flows.compute.errors import MediaError
from flows.compute.probe import MediaInfo

#: The compute version of version-0 (stored beside each value it makes): bump it when
#: results change (coverage counts records per version; this kind takes no stale mode).
COMPUTE_VERSION = 1

#: A record's fields at some schema version: `uri`, `media_type`, ..., `schema_version`.
Fields = dict[str, Any]


@dataclass(frozen=True)
class FileFacts:
    """What the client found out about a record's file."""

    #: The file's absolute path with every symlink resolved; None for an http(s) URL.
    path: PurePosixPath | None
    #: The media root's absolute path with every symlink resolved.
    media_root: PurePosixPath
    #: Bytes of the file.
    size_bytes: int
    #: Header facts of the file, by content (`flows.compute.probe.probe`).
    info: MediaInfo


#: Upgrades a record's fields by one schema version.
Step = Callable[[Fields, FileFacts], Fields]


def relative_uri(path: PurePosixPath, media_root: PurePosixPath) -> str:
    """`path` as a version-1 uri: POSIX, relative to `media_root`; `MediaError` if outside."""
    if not path.is_absolute() or not media_root.is_absolute():
        raise ValueError("path and media_root must be absolute")
    if not path.is_relative_to(media_root):
        raise MediaError(f"{path} is outside the media root {media_root}")
    relative = path.relative_to(media_root)
    if relative.parts in ((), (".",)):
        raise MediaError(f"{path} is the media root itself, not a file in it")
    if ".." in relative.parts:
        raise MediaError(f"{path} is not a normalised path (it has '..')")
    return relative.as_posix()


def step_0_to_1(record: Fields, facts: FileFacts) -> Fields:
    """A legacy record as version 1: its uri relative to the media root (an http(s) URL stays
    as it is), `media_type` from the content, `size_bytes`, `sample_rate` and `channels`."""
    uri = str(record.get("uri") or "")
    if is_url(uri):
        new_uri = uri
    elif facts.path is None:
        raise MediaError(f"{uri or 'the record'} has no local file to migrate")
    else:
        new_uri = relative_uri(facts.path, facts.media_root)
    return {
        "uri": new_uri,
        "media_type": facts.info.media_type,
        "size_bytes": facts.size_bytes,
        "sample_rate": facts.info.sample_rate,
        "channels": facts.info.channels,
        "schema_version": 1,
    }


#: Registered steps: `STEPS[n]` takes a record from schema_version n to n + 1.
STEPS: dict[int, Step] = {0: step_0_to_1}


def migrate(
    record: Mapping[str, Any],
    facts: FileFacts,
    *,
    to_version: int = CURRENT_SCHEMA_VERSION,
    steps: Mapping[int, Step] | None = None,
) -> Fields:
    """The record's fields at `to_version`, applying each registered step in turn.

    Raises `LookupError` if a step is missing (a bug, not a bad record).
    """
    chain = STEPS if steps is None else steps
    fields: Fields = dict(record)
    version = int(fields.get("schema_version") or 0)
    if version > to_version:
        raise ValueError(f"record is at schema_version {version}, past {to_version}")
    while version < to_version:
        step = chain.get(version)
        if step is None:
            raise LookupError(f"no migration step registered from schema_version {version}")
        fields |= step(fields, facts)
        if fields.get("schema_version") != version + 1:
            raise ValueError(f"step from schema_version {version} did not produce {version + 1}")
        version += 1
    return fields
