"""Resolving record uris under the media root, and streaming URLs to temporary files."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import respx

from api.schemas import BackfillKind, DurationResult, PendingItem
from flows.compute.errors import MediaError
from flows.media import RemotePolicy, downloaded, local_media, resolve_media_path
from flows.settings import ClientSettings
from flows.spec import Backfill, BackfillParams, Job, run_item


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


CDN = RemotePolicy(
    hosts=frozenset({"cdn.test", "mirror.test"}), max_bytes=4_000_000, timeout=httpx.Timeout(5.0)
)


def fetch(router: respx.Router, url: str, policy: RemotePolicy = CDN) -> bytes:
    with downloaded(url, policy, transport=httpx.MockTransport(router.handler)) as path:
        data = path.read_bytes()
    assert not path.exists()
    return data


def test_downloads_a_url_to_a_temporary_file_and_removes_it() -> None:
    router = respx.Router()
    route = router.get("https://cdn.test/clips/a.wav").respond(content=b"x" * 3_000_000)

    with downloaded(
        "https://cdn.test/clips/a.wav", CDN, transport=httpx.MockTransport(router.handler)
    ) as path:
        assert path.suffix == ".wav"
        assert path.read_bytes() == b"x" * 3_000_000
    assert not path.exists()
    assert "Authorization" not in route.calls.last.request.headers
    assert "Cookie" not in route.calls.last.request.headers


def test_failed_download_is_a_media_error_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A temporary folder of this test's own: other xdist workers download into /tmp meanwhile.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    router = respx.Router()
    router.get("https://cdn.test/gone.wav").respond(404)

    with pytest.raises(MediaError, match="HTTP 404"):
        fetch(router, "https://cdn.test/gone.wav")

    assert list(tmp_path.iterdir()) == []


def test_host_off_the_allowlist_is_never_asked() -> None:
    router = respx.Router()
    route = router.get("http://10.0.0.5/admin").respond(content=b"secret")

    with pytest.raises(MediaError) as refused:
        fetch(router, "http://10.0.0.5/admin")

    assert str(refused.value) == (
        "download of http://10.0.0.5/admin refused: host 10.0.0.5 is not in "
        "BACKFILL_REMOTE_HOSTS (cdn.test, mirror.test)"
    )
    assert route.call_count == 0


def test_default_settings_fetch_no_url_and_say_which_setting(tmp_path: Path) -> None:
    settings = ClientSettings(MEDIA_ROOT=tmp_path, API_TOKEN="t")
    item = PendingItem(record_id=1, revision=1, uri="https://cdn.test/a.wav")

    with pytest.raises(MediaError, match=r"not in BACKFILL_REMOTE_HOSTS \(empty\)"):
        with local_media(settings, item):
            pass


def test_redirect_to_an_allowed_host_is_followed_each_hop_checked() -> None:
    router = respx.Router()
    router.get("https://cdn.test/a.wav").respond(
        302, headers={"Location": "https://mirror.test/b.wav"}
    )
    router.get("https://mirror.test/b.wav").respond(307, headers={"Location": "/c.wav"})
    final = router.get("https://mirror.test/c.wav").respond(content=b"RIFFdata")

    assert fetch(router, "https://cdn.test/a.wav") == b"RIFFdata"
    assert final.call_count == 1


def test_redirect_off_the_allowlist_is_not_followed() -> None:
    router = respx.Router()
    router.get("https://cdn.test/a.wav").respond(
        301, headers={"Location": "http://169.254.169.254/latest/meta-data"}
    )
    metadata = router.get("http://169.254.169.254/latest/meta-data").respond(content=b"keys")

    with pytest.raises(MediaError, match=r"redirected to 169.254.169.254\): host 169.254.169.254"):
        fetch(router, "https://cdn.test/a.wav")

    assert metadata.call_count == 0


def test_redirect_loop_is_cut_short() -> None:
    router = respx.Router()
    router.get("https://cdn.test/loop").respond(302, headers={"Location": "https://cdn.test/loop"})

    with pytest.raises(MediaError, match="more than 5 redirects"):
        fetch(router, "https://cdn.test/loop")


def test_bytes_read_are_capped_declared_or_not() -> None:
    small = CDN._replace(max_bytes=1000)
    router = respx.Router()
    router.get("https://cdn.test/declared.wav").respond(content=b"x" * 1001)

    def undeclared(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=iter([b"x" * 600, b"x" * 600]))  # chunked, no length

    router.get("https://cdn.test/stream.wav").mock(side_effect=undeclared)
    router.get("https://cdn.test/fits.wav").respond(content=b"x" * 1000)

    for name in ("declared", "stream"):
        with pytest.raises(
            MediaError, match=r"larger than 1000 bytes \(BACKFILL_MAX_DOWNLOAD_BYTES\)"
        ):
            fetch(router, f"https://cdn.test/{name}.wav", small)
    assert fetch(router, "https://cdn.test/fits.wav", small) == b"x" * 1000


def test_remote_hosts_setting_is_a_comma_separated_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BACKFILL_REMOTE_HOSTS", " CDN.test, media.example.org ,")
    monkeypatch.setenv("BACKFILL_MAX_DOWNLOAD_BYTES", "5000")
    settings = ClientSettings(MEDIA_ROOT=tmp_path, API_TOKEN="t")

    policy = RemotePolicy.from_settings(settings)

    assert policy.hosts == {"cdn.test", "media.example.org"} and policy.max_bytes == 5000


def test_local_media_uses_the_settings_root(root: Path) -> None:
    settings = ClientSettings(MEDIA_ROOT=root, API_TOKEN="t")
    item = PendingItem(record_id=1, revision=1, uri="talks/a.wav")

    with local_media(settings, item) as path:
        assert path.read_bytes() == b"RIFF"


def _fail_with(message: str) -> Callable[[Job[BackfillParams]], DurationResult]:
    def compute(job: Job[BackfillParams]) -> DurationResult:
        raise MediaError(message.format(path=job.file, name=job.file.name))

    return compute


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("{path} could not be decoded", "talks/a.wav could not be decoded"),
        ("{name} is silent", "talks/a.wav is silent"),
        ("cannot read {path} (truncated)", "cannot read talks/a.wav (truncated)"),
    ],
)
def test_failure_reasons_name_files_relative_to_the_media_root(
    root: Path, message: str, reason: str
) -> None:
    """Readers see the ledger: no absolute path of the worker ever reaches it."""
    spec = Backfill(
        kind=BackfillKind.MEDIA_DURATION, result_model=DurationResult, compute=_fail_with(message)
    )
    settings = ClientSettings(MEDIA_ROOT=root, API_TOKEN="t")
    item = PendingItem(record_id=7, revision=1, uri="talks/a.wav")

    outcome = run_item(spec, Job(item, BackfillParams(), settings))

    assert outcome.error == reason
    assert str(root) not in (outcome.error or "") and str(root.resolve()) not in reason


def test_missing_file_reason_is_relative(root: Path) -> None:
    spec = Backfill(
        kind=BackfillKind.MEDIA_DURATION, result_model=DurationResult, compute=_fail_with("x")
    )
    settings = ClientSettings(MEDIA_ROOT=root, API_TOKEN="t")
    item = PendingItem(record_id=8, revision=1, uri="talks/gone.wav")

    outcome = run_item(spec, Job(item, BackfillParams(), settings))

    assert outcome.error == "talks/gone.wav does not exist under the media root"
