"""Temporary files that a killed process leaves behind, and how a later run knows them.

A writer `claim`s its temporary file: it creates it and holds an exclusive `flock` on it for
as long as it works. The kernel drops that lock when the process ends, however it ends
(SIGKILL included). A later run `sweep`s: a temporary file whose group has no locked member
and that is older than a grace period (the moment between creating a file and locking it) is
a leftover, and is removed. A live writer's files are never touched, on this machine or (on
a file system with working locks, e.g. NFSv4) another one.

Pure: no Prefect, no HTTP.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

#: Seconds a temporary file is left alone after it was last written, locked or not.
GRACE_SECONDS = 60.0


@contextmanager
def claim(path: Path) -> Iterator[int]:
    """Create `path` (it must not exist) and hold a lock on it until the block ends."""
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield fd
    finally:
        os.close(fd)  # releases the lock


def is_locked(path: Path) -> bool:
    """True while some process holds `claim`'s lock on `path`."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def sweep(
    directory: Path,
    pattern: str,
    group: Callable[[Path], str],
    *,
    grace: float = GRACE_SECONDS,
    now: float | None = None,
) -> list[Path]:
    """Remove the leftovers among `directory`'s files matching `pattern`; return them.

    Files are grouped by `group(path)` (one writer's files); a group with a locked member
    is alive. Files younger than `grace` seconds are kept too.
    """
    if not directory.is_dir():
        return []
    now = time.time() if now is None else now
    groups: defaultdict[str, list[Path]] = defaultdict(list)
    for path in directory.glob(pattern):
        groups[group(path)].append(path)
    removed = []
    for members in groups.values():
        if any(is_locked(p) for p in members):
            continue
        for path in members:
            try:
                if now - path.lstat().st_mtime < grace or not path.is_file():
                    continue
                path.unlink()
            except FileNotFoundError:  # another sweeper was first
                continue
            removed.append(path)
    return removed
