"""Where a record's bytes are: a file under the media root, or an http(s) URL streamed to a
temporary file. Nothing outside the media root is ever opened; a bad uri is a `MediaError`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path, PurePosixPath

import httpx

from api.schemas import PendingItem, is_url
from flows.compute.errors import MediaError
from flows.settings import ClientSettings

#: Bytes per read while streaming a URL to disk.
DOWNLOAD_CHUNK = 1 << 20


def resolve_media_path(root: Path, uri: str) -> Path:
    """The real path of `uri` under `root`, or `MediaError` if it is unsafe or not a file.

    Rejects absolute paths, `..`, and symlinks (anywhere on the path) that lead outside the
    root; the file must exist and be a regular file. Plain `os.path` on strings: this runs
    once per record, and pathlib's parsing cost more than the checks themselves.
    """
    if not uri or "\x00" in uri or "\\" in uri:
        raise MediaError(f"{uri!r} is not a valid relative path")
    if uri.startswith("/") or ".." in uri.split("/"):
        raise MediaError(f"{uri} is outside the media root (absolute path or '..')")
    real_root = _real_root(str(root))
    try:
        real = os.path.realpath(os.path.join(real_root, uri), strict=True)
    except FileNotFoundError:
        raise MediaError(f"{uri} does not exist under the media root") from None
    except (OSError, RuntimeError) as exc:  # a symlink loop, a file where a folder should be
        raise MediaError(f"{uri} cannot be resolved: {exc}") from None
    if not real.startswith(real_root.rstrip("/") + "/"):
        raise MediaError(f"{uri} is a symlink that leads outside the media root")
    if not os.path.isfile(real):
        raise MediaError(f"{uri} is not a regular file")
    return Path(real)


@lru_cache(maxsize=8)
def _real_root(root: str) -> str:
    return os.path.realpath(root)


@contextmanager
def downloaded(
    url: str, *, timeout: httpx.Timeout, transport: httpx.BaseTransport | None = None
) -> Iterator[Path]:
    """Stream `url` to a temporary file, yield its path, and remove it afterwards.

    Sends no API token (the URL is not our API). Any HTTP or transport failure is a
    `MediaError` about this record, not an error of the run.
    """
    suffix = PurePosixPath(httpx.URL(url).path).suffix[:16]
    fd, name = tempfile.mkstemp(prefix="backfill-", suffix=suffix)
    path = Path(name)
    try:
        try:
            with (
                os.fdopen(fd, "wb") as out,
                httpx.Client(transport=transport, timeout=timeout, follow_redirects=True) as http,
                http.stream("GET", url) as response,
            ):
                if not response.is_success:
                    raise MediaError(f"download of {url} failed: HTTP {response.status_code}")
                for chunk in response.iter_bytes(DOWNLOAD_CHUNK):
                    out.write(chunk)
        except httpx.HTTPError as exc:
            raise MediaError(f"download of {url} failed: {exc or type(exc).__name__}") from None
        yield path
    finally:
        path.unlink(missing_ok=True)


@contextmanager
def local_media(settings: ClientSettings, item: PendingItem) -> Iterator[Path]:
    """The local file of a pending record: a resolved path, or a downloaded temporary copy."""
    if not item.uri:
        raise MediaError(f"record {item.record_id} has no uri")
    if is_url(item.uri):
        timeout = httpx.Timeout(settings.TIMEOUT, connect=settings.CONNECT_TIMEOUT)
        with downloaded(item.uri, timeout=timeout) as path:
            yield path
    else:
        yield resolve_media_path(settings.MEDIA_ROOT, item.uri)
