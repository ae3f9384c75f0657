"""The one error compute raises for a bad record, and the file check every reader shares."""

import os
import stat
from pathlib import Path


class MediaError(Exception):
    """A record that cannot be processed (missing, unreadable, corrupt, outside the root...).

    The engine turns it into a per-record failure posted to the API; the chunk goes on.
    The message is the reason an operator reads, so make it one clear sentence.
    """


def read_error(exc: OSError, name: str, *, missing: str = "does not exist") -> MediaError:
    """The `MediaError` for an `OSError` met reading the file `name` (raise it `from None`)."""
    if isinstance(exc, FileNotFoundError):
        return MediaError(f"{name} {missing}")
    if isinstance(exc, PermissionError):
        return MediaError(f"{name} is not readable (permission denied)")
    return MediaError(f"{name} could not be read: {exc.strerror or exc}")


def stat_regular_file(path: Path) -> os.stat_result:
    """`path`'s stat, or MediaError if it is missing, unreadable, or not a regular file."""
    name = path.name or str(path)
    try:
        info = path.stat()
    except OSError as exc:
        raise read_error(exc, name) from None
    if stat.S_ISDIR(info.st_mode):
        raise MediaError(f"{name} is a directory, not a media file")
    if not stat.S_ISREG(info.st_mode):
        raise MediaError(f"{name} is not a regular file")
    return info
