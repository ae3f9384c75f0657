"""The clip-compile flow on tiny real videos (64x48, 10 fps, tone audio) against a real API
(uvicorn on 127.0.0.1, a temp SQLite file) under Prefect's test server."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.schemas import (
    BackfillKind,
    ClipCompileResult,
    ClipIn,
    MediaIn,
    ProjectCreate,
    ProjectPublic,
    ProjectStatus,
    ProjectStatusUpdate,
    ReprocessMode,
)
from flows.client import APIConnectionError, BackfillClient
from flows.clip_compile import clip_compile
from flows.compute.render import probe_media
from flows.engine import BackfillFailed, ProgressUpdate, progress_listener
from tests.conftest import ROOT, LiveApi
from tests.flows.test_leftovers import age, start_render, writers  # noqa: F401 - fixture
from tests.media import count_frames, decode_audio, rms, write_video

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_api_url")]

SOURCES: dict[str, dict[str, Any]] = {
    "a": {"seconds": 1.5, "freq": 440.0},
    "b": {"seconds": 1.0, "freq": 880.0},
    "c": {"seconds": 2.0, "freq": 660.0},
    "swipe": {"seconds": 0.5, "freq": 220.0},
}


# --- helpers -------------------------------------------------------------------------------


def api_client(api: LiveApi) -> BackfillClient:
    return BackfillClient(api.url, api.admin_token)


@pytest.fixture
def api(client_env: LiveApi) -> LiveApi:
    """The live API, with the client's environment (BACKFILL_*) pointed at it."""
    return client_env


@pytest.fixture
def videos(client_env: LiveApi, media_root: Path) -> dict[str, int]:
    """The source videos under the media root, registered; name -> media id."""
    for name, spec in SOURCES.items():
        write_video(media_root / f"videos/{name}.mp4", **spec)
    return register(client_env, [f"videos/{name}.mp4" for name in SOURCES], media_root)


def register(api: LiveApi, uris: list[str], root: Path | None = None) -> dict[str, int]:
    items = [
        MediaIn(uri=uri, media_type="video")
        if root is not None
        else MediaIn(uri=uri, schema_version=0)
        for uri in uris
    ]
    with api_client(api) as client:
        result = client.register_media(items)
    ids = {Path(i.uri).stem: i.id for i in result.items if i.id is not None}
    assert len(ids) == len(uris), result
    return ids


def put_tier(api: LiveApi, name: str, **limits: float) -> None:
    response = httpx.put(
        f"{api.url}/api/v1/tiers/{name}",
        json=limits,
        headers={"Authorization": f"Bearer {api.admin_token}"},
    )
    assert response.status_code == 200, response.text


def create_project(api: LiveApi, name: str, owner: str, clips: list[ClipIn], **extra: Any) -> int:
    with api_client(api) as client:
        return client.create_project(ProjectCreate(name=name, owner=owner, clips=clips, **extra)).id


def read_project(api: LiveApi, project_id: int) -> ProjectPublic:
    with api_client(api) as client:
        return client.get_project(project_id)


def remaining_seconds(api: LiveApi, project_id: int) -> float:
    with api_client(api) as client:
        return client.compilation_context(project_id).remaining_render_seconds


def usage_rows(api: LiveApi) -> dict[int, int]:
    """Render usage rows per project, read straight from the API's SQLite file."""
    path = api.database_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT project_id, COUNT(*) FROM render_usage GROUP BY project_id")
        return dict(rows.fetchall())


def files_in(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()} if directory.is_dir() else set()


@pytest.fixture
def lose_first_compile_response(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The first POST /backfills/clip-compile reaches the server, but its answer is lost."""
    original = httpx.HTTPTransport.handle_request
    lost: list[str] = []

    def handle(self: httpx.HTTPTransport, request: httpx.Request) -> httpx.Response:
        response = original(self, request)
        if (
            not lost
            and request.method == "POST"
            and request.url.path.endswith("/backfills/clip-compile")
        ):
            response.read()
            response.close()
            lost.append(request.headers["Idempotency-Key"])
            raise httpx.ReadTimeout("answer lost on the way back", request=request)
        return response

    monkeypatch.setattr(httpx.HTTPTransport, "handle_request", handle)
    yield lost


# --- tests ---------------------------------------------------------------------------------


@pytest.fixture
def failing(api: LiveApi, media_root: Path, videos: dict[str, int]) -> dict[str, int]:
    """Two projects that fail: one over its tier's quota, one with a clip whose file is gone;
    name -> project id."""
    put_tier(api, "tiny", max_clips=10, max_height=720, monthly_render_seconds=1)
    write_video(media_root / "videos/gone.mp4", seconds=1.0)
    gone = register(api, ["videos/gone.mp4"], media_root)["gone"]
    (media_root / "videos/gone.mp4").unlink()
    a, c = videos["a"], videos["c"]
    clips = [ClipIn(media_id=a, start=0.0, end=1.0), ClipIn(media_id=gone, start=0.0, end=0.5)]
    return {
        "missing": create_project(api, "missing", "bob", clips),
        "over": create_project(
            api, "over", "carol", [ClipIn(media_id=c, start=0.0, end=2.0)], tier="tiny"
        ),
    }


def test_clip_compile_renders_queued_projects(
    api: LiveApi, media_root: Path, videos: dict[str, int]
) -> None:
    put_tier(api, "small", max_clips=2, max_height=32, monthly_render_seconds=60)
    a, b, c, swipe = videos["a"], videos["b"], videos["c"], videos["swipe"]
    fancy = create_project(
        api,
        "fancy",
        "alice",
        [ClipIn(media_id=a, start=0.2, end=1.2), ClipIn(media_id=b, start=0.0, end=0.8)]
        + [ClipIn(media_id=c, start=0.0, end=1.0)],  # beyond the tier's max_clips: dropped
        tier="small",
        intro_media_id=swipe,
        outro_media_id=swipe,
        transition_media_id=swipe,
    )  # no fps: the default 24
    plain = create_project(api, "plain", "bob", [ClipIn(media_id=c, start=0.5, end=2.0)], fps=10)
    output_root = media_root / "compiled"

    report = clip_compile(verify_sample=1.0)

    assert report.status == "completed"
    assert (report.processed, report.applied, report.failed, report.rejected) == (2, 2, 0, 0)
    # Verified: each output file's sha256 and duration against its record (no re-render).
    assert (report.verified, report.verified_ok, report.mismatches) == (2, 2, [])
    # Timelines: intro + clip + transition + clip + outro; the third clip is dropped.
    timelines = {fancy: (0.5 + 1.0 + 0.5 + 0.8 + 0.5, 24.0, 32), plain: (1.5, 10.0, 48)}
    with api_client(api) as client:
        for project_id, (seconds, fps, height) in timelines.items():
            project = read_project(api, project_id)
            assert project.status is ProjectStatus.COMPILED and project.reason is None
            assert project.output_media_id is not None and project.thumbnail_uri is not None
            record = client.get_media(project.output_media_id)
            path = media_root / record.uri
            assert path.parent == output_root
            assert path.name.startswith(f"project-{project_id}-") and path.suffix == ".mp4"

            info = probe_media(path)
            assert abs(info.duration - seconds) <= 1 / fps + 1e-6
            assert abs(count_frames(path) / fps - seconds) <= 1 / fps + 1e-6
            assert info.height == height and info.height <= 720
            assert info.width == 2 * round(64 * height / 48 / 2)
            assert info.has_audio and rms(decode_audio(path)) > 0.1  # the tones, not silence

            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            assert record.hash == digest and record.hash_algorithm == "sha256"
            assert record.size_bytes == path.stat().st_size
            assert record.duration == pytest.approx(info.duration)
            poster = media_root / project.thumbnail_uri
            assert poster.parent == output_root and poster.read_bytes()[:2] == b"\xff\xd8"
    assert len(files_in(output_root)) == 4  # two videos, two posters: no part files
    assert usage_rows(api) == {fancy: 1, plain: 1}
    assert remaining_seconds(api, fancy) == pytest.approx(60 - 3.3, abs=1 / 24)
    assert clip_compile().processed == 0  # nothing is left to do


def test_clip_compile_verification_finds_an_output_file_changed_behind_its_record(
    client_env: LiveApi, media_root: Path, videos: dict[str, int]
) -> None:
    project_id = create_project(
        client_env, "plain", "bob", [ClipIn(media_id=videos["c"], start=0.5, end=2.0)], fps=10
    )

    def tamper(update: ProgressUpdate) -> None:
        """Once the project is compiled, and before verification, its file is changed."""
        if update.applied == 1:
            (output,) = (media_root / "compiled").glob("*.mp4")
            with output.open("ab") as file:
                file.write(b"\x00")

    with progress_listener(tamper), pytest.raises(BackfillFailed) as failed:
        clip_compile(verify_sample=1.0)

    report = failed.value.report
    assert (report.applied, report.verified, report.verified_ok) == (1, 1, 0)
    (mismatch,) = report.mismatches
    assert (mismatch.record_id, mismatch.field) == (project_id, "hash")
    record = api_client(client_env).get_media(read_project(client_env, project_id).output_media_id)
    assert mismatch.stored == record.hash and mismatch.recomputed != record.hash
    assert report.reason is not None and report.reason.startswith("verification failed: 1 of 1")


def test_clip_compile_lost_answer_is_replayed_and_usage_counted_once(
    api: LiveApi, videos: dict[str, int], lose_first_compile_response: list[str]
) -> None:
    plain = create_project(
        api, "plain", "bob", [ClipIn(media_id=videos["c"], start=0.5, end=2.0)], fps=10
    )

    report = clip_compile()

    assert (report.processed, report.applied, report.failed) == (1, 1, 0)
    assert len(lose_first_compile_response) == 1  # one answer was lost, and the POST replayed
    assert usage_rows(api) == {plain: 1}
    # A later run posting the same result again (another Idempotency-Key) changes nothing.
    with api_client(api) as client:
        project = read_project(api, plain)
        assert project.output_media_id is not None
        record = client.get_media(project.output_media_id)
        again = client.post_results(
            BackfillKind.CLIP_COMPILE,
            [
                ClipCompileResult(
                    project_id=plain,
                    output_uri=record.uri,
                    thumbnail_uri=project.thumbnail_uri or "",
                    duration=record.duration or 0.0,
                    hash=record.hash or "",
                    size_bytes=record.size_bytes or 0,
                    render_seconds=record.duration or 0.0,
                )
            ],
        )
    assert (again.applied, again.unchanged) == (0, 1)
    assert usage_rows(api) == {plain: 1}


def test_clip_compile_failures_carry_their_reason_and_render_nothing(
    client_env: LiveApi, media_root: Path, failing: dict[str, int]
) -> None:
    report = clip_compile()

    assert report.status == "completed"
    assert (report.processed, report.applied, report.failed, report.rejected) == (2, 0, 2, 0)
    # The over-quota project failed before rendering: its reason is on the project, no file.
    over = read_project(client_env, failing["over"])
    assert over.status is ProjectStatus.FAILED and over.output_media_id is None
    assert over.reason is not None
    assert "render quota exceeded" in over.reason and "1.00 s" in over.reason
    lost = read_project(client_env, failing["missing"])
    assert lost.status is ProjectStatus.FAILED and lost.reason is not None
    assert "clip 2 (media" in lost.reason and "videos/gone.mp4 does not exist" in lost.reason
    assert files_in(media_root / "compiled") == set()  # no part files, no failed outputs
    assert usage_rows(client_env) == {}


def test_clip_compile_mode_failed_reprocesses_the_failures(
    client_env: LiveApi, media_root: Path, failing: dict[str, int]
) -> None:
    assert clip_compile().failed == 2
    # Put the missing clip back and reprocess the failures: it compiles, the quota still bites.
    write_video(media_root / "videos/gone.mp4", seconds=1.0)

    retried = clip_compile(mode=ReprocessMode.FAILED)

    assert (retried.processed, retried.applied, retried.failed) == (2, 1, 1)
    assert read_project(client_env, failing["missing"]).status is ProjectStatus.COMPILED
    still = read_project(client_env, failing["over"])
    assert still.status is ProjectStatus.FAILED and "render quota exceeded" in (still.reason or "")
    assert usage_rows(client_env) == {failing["missing"]: 1}
    assert clip_compile().processed == 0  # nothing is left to do
    assert len(files_in(media_root / "compiled")) == 2


def test_clip_compile_bad_projects_fail_with_reasons(
    api: LiveApi, media_root: Path, videos: dict[str, int], tmp_path: Path
) -> None:
    write_video(tmp_path / "outside.mp4", seconds=1.0)
    (media_root / "videos/link.mp4").symlink_to(tmp_path / "outside.mp4")
    outside = register(api, [str(tmp_path / "outside.mp4")])["outside"]  # a legacy record
    link = register(api, ["videos/link.mp4"], media_root)["link"]
    a = videos["a"]
    ids = {
        "absolute": create_project(api, "p1", "dan", [ClipIn(media_id=outside, start=0, end=1)]),
        "symlink": create_project(
            api,
            "p2",
            "dan",
            [ClipIn(media_id=a, start=0, end=1)],
            intro_media_id=link,
        ),
        "span": create_project(api, "p3", "dan", [ClipIn(media_id=a, start=1.0, end=3.0)]),
        "empty": create_project(api, "p4", "dan", []),
    }

    report = clip_compile()

    assert report.status == "completed"
    assert (report.processed, report.applied, report.failed) == (4, 0, 4)
    reasons = {name: read_project(api, pid).reason or "" for name, pid in ids.items()}
    assert "outside the media root" in reasons["absolute"]
    assert reasons["symlink"].startswith("intro (media") and "symlink" in reasons["symlink"]
    assert "clip 1 span [1, 3] s is outside a.mp4 (1.5 s long)" in reasons["span"]
    assert reasons["empty"] == "project has no clips"
    assert all(read_project(api, pid).status is ProjectStatus.FAILED for pid in ids.values())
    assert files_in(media_root / "compiled") == set()
    assert usage_rows(api) == {}


def test_clip_compile_dry_run_writes_nothing(
    api: LiveApi, media_root: Path, videos: dict[str, int]
) -> None:
    ok = create_project(api, "ok", "erin", [ClipIn(media_id=videos["a"], start=0, end=1)])
    empty = create_project(api, "empty", "erin", [])

    report = clip_compile(dry_run=True)

    assert report.dry_run and report.status == "completed"
    assert (report.processed, report.applied, report.failed) == (2, 1, 1)
    assert report.top_errors[0].error == "project has no clips"
    for project_id in (ok, empty):
        project = read_project(api, project_id)
        assert project.status is ProjectStatus.QUEUED and project.reason is None
    assert not (media_root / "compiled").exists()
    assert usage_rows(api) == {}


def test_clip_compile_skips_a_project_claimed_by_another_run(
    api: LiveApi, media_root: Path, videos: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = create_project(api, "mine", "fay", [ClipIn(media_id=videos["b"], start=0, end=0.5)])
    theirs = create_project(api, "theirs", "fay", [ClipIn(media_id=videos["a"], start=0, end=1)])
    original = BackfillClient.pending

    def racing_pending(self: BackfillClient, *args: Any, **kwargs: Any) -> Any:
        """Another run claims `theirs` right after this run paged it."""
        page = original(self, *args, **kwargs)
        if any(item.record_id == theirs for item in page.items):
            with api_client(api) as other:
                other.set_project_status(theirs, ProjectStatusUpdate(status="compiling"))
        return page

    monkeypatch.setattr(BackfillClient, "pending", racing_pending)

    report = clip_compile()

    assert report.status == "completed"
    assert (report.processed, report.applied, report.unchanged, report.failed) == (2, 1, 1, 0)
    assert read_project(api, mine).status is ProjectStatus.COMPILED
    claimed = read_project(api, theirs)
    assert claimed.status is ProjectStatus.COMPILING and claimed.reason is None
    assert usage_rows(api) == {mine: 1}
    assert all(name.startswith(f"project-{mine}-") for name in files_in(media_root / "compiled"))


def test_clip_compile_rerender_after_a_crash_reuses_the_output_name(
    api: LiveApi, media_root: Path, videos: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    pid = create_project(api, "crash", "gil", [ClipIn(media_id=videos["b"], start=0, end=1)])
    output_root = media_root / "compiled"

    def crash(*args: Any, **kwargs: Any) -> Any:
        raise APIConnectionError("the API went away before the result was posted")

    with monkeypatch.context() as patch:
        patch.setattr(BackfillClient, "post_results", crash)
        with pytest.raises(BackfillFailed):
            clip_compile()
    first = files_in(output_root)
    assert len(first) == 2  # the video and its poster, published whole
    assert read_project(api, pid).status is ProjectStatus.COMPILING
    assert clip_compile().processed == 0  # the claim holds until its lease runs out

    with sqlite3.connect(api.database_url.removeprefix("sqlite:///")) as db:
        db.execute("UPDATE projects SET updated_at = '2000-01-01 00:00:00+00:00'")
    report = clip_compile()

    assert (report.processed, report.applied) == (1, 1)
    assert files_in(output_root) == first  # the same names: no second copy, no part file
    project = read_project(api, pid)
    assert project.status is ProjectStatus.COMPILED
    with api_client(api) as client:
        assert project.output_media_id is not None
        record = client.get_media(project.output_media_id)
    assert record.hash == hashlib.sha256((media_root / record.uri).read_bytes()).hexdigest()
    assert usage_rows(api) == {pid: 1}


def test_clip_compile_imports_no_database_modules() -> None:
    script = (
        "import json, sys, flows.clip_compile\n"
        "bad = ('sqlalchemy', 'sqlmodel', 'alembic', 'psycopg')\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & set(bad))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert json.loads(done.stdout) == []


def test_clip_compile_run_removes_parts_of_a_killed_render_not_of_a_live_one(
    client_env: LiveApi,
    media_root: Path,
    writers: list[subprocess.Popen[str]],  # noqa: F811 - the fixture
) -> None:
    out = media_root / "compiled"
    out.mkdir(parents=True)
    killed = out / ".p1-abc.mp4.111111111111.part.mp4"
    live = out / ".p2-def.mp4.222222222222.part.mp4"
    victim = start_render(writers, killed)
    start_render(writers, live)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    age(killed, killed.with_suffix(".m4a"), live, live.with_suffix(".m4a"))

    report = clip_compile()

    assert report.status == "completed" and report.processed == 0
    assert not killed.exists() and not killed.with_suffix(".m4a").exists()
    assert live.exists() and live.with_suffix(".m4a").exists()
