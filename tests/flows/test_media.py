"""Resolving record uris under the media root, and streaming URLs to temporary files."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
import respx

from api.schemas import PendingItem
from flows.compute.errors import MediaError
from flows.media import downloaded, local_media, resolve_media_path
from flows.settings import ClientSettings


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "media"
    (root / "talks").mkdir(parents=True)
    (root / "talks" / "a.wav").write_bytes(b"RIFF")
    (tmp_path / "secret.txt").write_text("not media")
    return root


def test_resolves_a_relative_uri(root: Path) -> None:
    assert resolve_media_path(root, "talks/a.wav") == (root / "talks" / "a.wav").resolve()


def test_follows_a_symlink_that_stays_inside(root: Path) -> None:
    (root / "alias.wav").symlink_to(root / "talks" / "a.wav")

    assert resolve_media_path(root, "alias.wav") == (root / "talks" / "a.wav").resolve()


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("/etc/passwd", "outside the media root"),
        ("../secret.txt", "outside the media root"),
        ("talks/../../secret.txt", "outside the media root"),
        ("talks\\a.wav", "not a valid relative path"),
        ("talks/missing.wav", "does not exist"),
        ("talks", "not a regular file"),
    ],
)
def test_rejects_unsafe_or_missing_uris(root: Path, uri: str, reason: str) -> None:
    with pytest.raises(MediaError, match=reason):
        resolve_media_path(root, uri)


def test_rejects_symlinks_escaping_the_root(root: Path) -> None:
    (root / "escape.wav").symlink_to(root.parent / "secret.txt")
    (root / "outdir").symlink_to(root.parent, target_is_directory=True)

    with pytest.raises(MediaError, match="symlink that leads outside"):
        resolve_media_path(root, "escape.wav")
    with pytest.raises(MediaError, match="symlink that leads outside"):
        resolve_media_path(root, "outdir/secret.txt")


def test_downloads_a_url_to_a_temporary_file_and_removes_it() -> None:
    router = respx.Router()
    route = router.get("https://cdn.test/clips/a.wav").respond(content=b"x" * 3_000_000)

    with downloaded(
        "https://cdn.test/clips/a.wav",
        timeout=httpx.Timeout(5.0),
        transport=httpx.MockTransport(router.handler),
    ) as path:
        assert path.suffix == ".wav"
        assert path.read_bytes() == b"x" * 3_000_000
    assert not path.exists()
    assert "Authorization" not in route.calls.last.request.headers


def test_failed_download_is_a_media_error_and_leaves_nothing(tmp_path: Path) -> None:
    router = respx.Router()
    router.get("https://cdn.test/gone.wav").respond(404)
    before = set(os.listdir(os.environ.get("TMPDIR", "/tmp")))

    with pytest.raises(MediaError, match="HTTP 404"):
        with downloaded(
            "https://cdn.test/gone.wav",
            timeout=httpx.Timeout(5.0),
            transport=httpx.MockTransport(router.handler),
        ):
            pass

    leftovers = set(os.listdir(os.environ.get("TMPDIR", "/tmp"))) - before
    assert not [name for name in leftovers if name.startswith("backfill-")]


def test_local_media_uses_the_settings_root(root: Path) -> None:
    settings = ClientSettings(MEDIA_ROOT=root, API_TOKEN="t")
    item = PendingItem(record_id=1, revision=1, uri="talks/a.wav")

    with local_media(settings, item) as path:
        assert path.read_bytes() == b"RIFF"
