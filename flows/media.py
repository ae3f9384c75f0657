"""Where a record's bytes are: a file under the media root, or an http(s) URL streamed to a
temporary file. Nothing outside the media root is ever opened; a bad uri is a `MediaError`.

URLs are fetched only from the hosts listed in `BACKFILL_REMOTE_HOSTS` (none by default), a
redirect only to such a host, and at most `BACKFILL_MAX_DOWNLOAD_BYTES` of each: a record's
uri is written by whoever may write records, and must not make a worker a proxy into its
own network.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import httpx

from api.schemas import PendingItem, is_url
from flows.client import tls_context
from flows.compute.errors import MediaError
from flows.compute.leftovers import sweep
from flows.settings import ClientSettings

#: Bytes per read while streaming a URL to disk.
DOWNLOAD_CHUNK = 1 << 20
#: Name prefix of downloaded temporary files (in the system's temporary directory).
DOWNLOAD_PREFIX = "backfill-download-"
#: Redirect hops followed (each to an allowed host) before a download is refused.
MAX_REDIRECTS = 5


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


class RemotePolicy(NamedTuple):
    """What a worker may fetch: hosts (exact, lower case), bytes per file, timeouts."""

    hosts: frozenset[str]
    max_bytes: int
    timeout: httpx.Timeout

    @classmethod
    def from_settings(cls, settings: ClientSettings) -> RemotePolicy:
        return cls(
            hosts=frozenset(settings.REMOTE_HOSTS),
            max_bytes=settings.MAX_DOWNLOAD_BYTES,
            timeout=httpx.Timeout(settings.TIMEOUT, connect=settings.CONNECT_TIMEOUT),
        )

    def check(self, url: httpx.URL, original: str) -> None:
        """MediaError unless `url` is http(s) on an allowed host."""
        if url.scheme not in ("http", "https"):
            raise MediaError(f"download of {original} refused: {url.scheme}:// is not fetched")
        if url.host.lower() not in self.hosts:
            hop = "" if str(url) == original else f" (redirected to {url.host})"
            listed = ", ".join(sorted(self.hosts)) or "empty"
            raise MediaError(
                f"download of {original} refused{hop}: host {url.host} is not in "
                f"BACKFILL_REMOTE_HOSTS ({listed})"
            )


@contextmanager
def downloaded(
    url: str, policy: RemotePolicy, *, transport: httpx.BaseTransport | None = None
) -> Iterator[Path]:
    """Stream `url` to a temporary file, yield its path, and remove it afterwards.

    Only hosts on the allowlist are asked, every redirect hop included (followed here, one
    at a time, never by httpx); at most `policy.max_bytes` are read. No API token, cookie or
    other credential is sent: the URL is not our API. Any failure is a `MediaError` about
    this record, not an error of the run.
    """
    target = httpx.URL(url)
    policy.check(target, url)
    suffix = PurePosixPath(target.path).suffix[:16]
    fd, name = tempfile.mkstemp(prefix=DOWNLOAD_PREFIX, suffix=suffix)
    path = Path(name)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # alive: `sweep_downloads` keeps it
        try:
            with (
                os.fdopen(fd, "wb") as out,
                httpx.Client(
                    transport=transport, timeout=policy.timeout, verify=tls_context()
                ) as http,
                _fetch(http, url, policy) as response,
            ):
                declared = response.headers.get("Content-Length", "")
                if declared.isdigit() and int(declared) > policy.max_bytes:
                    raise _too_big(url, policy)
                read = 0
                for chunk in response.iter_bytes(DOWNLOAD_CHUNK):
                    read += len(chunk)
                    if read > policy.max_bytes:
                        raise _too_big(url, policy)
                    out.write(chunk)
        except httpx.HTTPError as exc:
            raise MediaError(f"download of {url} failed: {exc or type(exc).__name__}") from None
        yield path
    finally:
        path.unlink(missing_ok=True)


@contextmanager
def _fetch(http: httpx.Client, url: str, policy: RemotePolicy) -> Iterator[httpx.Response]:
    """The final answer to GET `url`, each redirect checked against the policy first."""
    request = http.build_request("GET", url)
    for _ in range(MAX_REDIRECTS + 1):
        response = http.send(request, stream=True, follow_redirects=False)
        if not response.is_redirect:
            try:
                if not response.is_success:
                    raise MediaError(f"download of {url} failed: HTTP {response.status_code}")
                yield response
            finally:
                response.close()
            return
        response.close()
        next_request = response.next_request
        if next_request is None:
            raise MediaError(f"download of {url} failed: a redirect without a Location")
        policy.check(next_request.url, url)
        request = next_request
    raise MediaError(f"download of {url} failed: more than {MAX_REDIRECTS} redirects")


def _too_big(url: str, policy: RemotePolicy) -> MediaError:
    return MediaError(
        f"download of {url} refused: larger than {policy.max_bytes} bytes "
        "(BACKFILL_MAX_DOWNLOAD_BYTES)"
    )


def sweep_downloads() -> list[Path]:
    """Remove downloads that a killed run left in the temporary directory (not live ones)."""
    return sweep(Path(tempfile.gettempdir()), f"{DOWNLOAD_PREFIX}*", str)


@contextmanager
def local_media(settings: ClientSettings, item: PendingItem) -> Iterator[Path]:
    """The local file of a pending record: a resolved path, or a downloaded temporary copy."""
    if not item.uri:
        raise MediaError(f"record {item.record_id} has no uri")
    if is_url(item.uri):
        with downloaded(item.uri, RemotePolicy.from_settings(settings)) as path:
            yield path
    else:
        yield resolve_media_path(settings.MEDIA_ROOT, item.uri)
