"""The API process is SIGKILLed in the middle of a run and started again on the same port a
few seconds later: the run completes (the client's retries, or one rerun) and every record
is written exactly once, render usage included.

Real uvicorn processes over the session's database (SQLite file, or PostgreSQL with
BACKFILL_TEST_DATABASE_URL); the flows run in this process under Prefect's test server.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.schemas import ClipIn, ProjectCreate, ProjectStatus
from flows.clip_compile import clip_compile
from flows.engine import BackfillFailed, BackfillReport
from flows.file_hashing import file_hashing
from tests.conftest import LiveApi
from tests.helpers import file_items, register
from tests.media import write_video
from tests.reliability.faults import kill_api_on, kill_api_when
from tests.reliability.helpers import Db, admin_client, assert_hashed_once, sha256_of, small_files

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_api_url")]

FILES = 3000
BATCH = 20  # 150 batches


def run_until_done(run: Callable[..., BackfillReport], **params: Any) -> list[BackfillReport]:
    """The run's report, plus one rerun's if the first ended Failed."""
    reports = []
    try:
        reports.append(run(**params))
    except BackfillFailed as failed:
        reports.append(failed.report)
        reports.append(run(**params))
    return reports


@pytest.mark.timeout(180)
def test_api_killed_twice_mid_file_hashing_run_writes_every_hash_once(
    flow_env: LiveApi, media_root: Path, db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = small_files(media_root, FILES)
    register(flow_env, file_items(media_root, paths, sizes=False))
    # First crash: whenever 300 records are in, whatever the server is doing right then
    # (most likely in the middle of a batch's transaction), with chunks in flight.
    anytime = kill_api_when(flow_env, db, kind="file-hashing", applied=300)
    # Second crash, after the first restart: the 100th batch is committed, then the API
    # dies before its answer reaches the client, whose retry must not apply it twice.
    lost_answer = kill_api_on(
        monkeypatch,
        flow_env,
        route="/backfills/file-hashing",
        nth=100,
        db=db,
        kind="file-hashing",
    )

    reports = run_until_done(file_hashing, batch_size=BATCH, concurrency=3)
    anytime.wait_restarted()
    lost_answer.wait_restarted()

    assert anytime.applied_at_kill is not None and lost_answer.applied_at_kill is not None
    assert 300 <= anytime.applied_at_kill < lost_answer.applied_at_kill < FILES
    assert lost_answer.answer_status == 200
    final = reports[-1]
    assert final.status == "completed", final.reason
    assert sum(r.applied for r in reports) == FILES
    assert sum(r.failed + r.rejected for r in reports) == 0
    if len(reports) == 1:  # the retries carried the run through both outages
        assert (final.processed, final.applied, final.unchanged) == (FILES, FILES, 0)
    assert_hashed_once(db, media_root, FILES)
    # The batch whose answer was lost was replayed from its key, not applied again.
    lost = db.rows(
        "SELECT applied, flow_run_id FROM audit WHERE idempotency_key = :key",
        key=lost_answer.key,
    )
    assert [tuple(row) for row in lost] == [(BATCH, reports[0].flow_run_id)]


# --- clip-compile: render usage counted once -----------------------------------------------


def compile_setup(api: LiveApi, root: Path, projects: int) -> dict[int, str]:
    """Tiny source videos and `projects` queued projects of one clip each; id -> owner."""
    sources = []
    for n in range(projects):
        path = root / f"videos/source-{n}.mp4"
        write_video(path, seconds=0.8, freq=300.0 + 100 * n)
        sources.append(path)
    ids = register(api, file_items(root, sources, "video", sizes=False))
    tier = {"max_clips": 4, "max_height": 48, "monthly_render_seconds": 60}
    response = httpx.put(  # the client has no call for tiers: operators set them
        f"{api.url}/api/v1/tiers/reliable",
        json=tier,
        headers={"Authorization": f"Bearer {api.admin_token}"},
    )
    assert response.status_code == 200, response.text
    with admin_client(api) as client:
        owners = {}
        for n, path in enumerate(sources):
            owner = f"owner-{n % 2}"
            created = client.create_project(
                ProjectCreate(
                    name=f"p{n}",
                    owner=owner,
                    tier="reliable",
                    fps=10,
                    clips=[
                        ClipIn(media_id=ids[path.relative_to(root).as_posix()], start=0.1, end=0.6)
                    ],
                )
            )
            owners[created.id] = owner
    return owners


def assert_compiled_once(api: LiveApi, db: Db, root: Path, owners: dict[int, str]) -> None:
    """Each project compiled, its output recorded with hashlib's hash, its usage once."""
    with admin_client(api) as client:
        statuses = {p: client.get_project(p).status.value for p in owners}
    assert set(statuses.values()) == {ProjectStatus.COMPILED.value}, statuses
    usage = db.rows("SELECT project_id, seconds FROM render_usage ORDER BY project_id")
    assert [p for p, _ in usage] == sorted(owners), usage  # one row per project, no more
    seconds = dict(usage)
    with admin_client(api) as client:
        for project_id, owner in owners.items():
            project = client.get_project(project_id)
            output = client.get_media(project.output_media_id or 0)
            path = root / output.uri
            assert output.hash == sha256_of(path) and output.size_bytes == path.stat().st_size
            assert seconds[project_id] == pytest.approx(output.duration)
            assert seconds[project_id] == pytest.approx(0.5, abs=0.1 + 1e-6)
            # Remaining quota: the tier's 60 s minus this owner's renders, each counted once.
            used = sum(seconds[p] for p, o in owners.items() if o == owner)
            left = client.compilation_context(project_id).remaining_render_seconds
            assert left == pytest.approx(60 - used)
    assert db.applied("clip-compile") == len(owners)
    keys = db.rows("SELECT idempotency_key FROM audit WHERE kind = 'clip-compile'")
    assert len(keys) == len({k for (k,) in keys}) == len(owners)


@pytest.mark.timeout(120)
def test_api_killed_while_clip_compile_posts_counts_usage_once(
    flow_env: LiveApi, media_root: Path, db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    owners = compile_setup(flow_env, media_root, projects=3)
    route = "/backfills/clip-compile"
    # The first project's result is committed (usage counted), then the API dies before
    # answering: the retry after the restart must replay it, not count usage again.
    lost_answer = kill_api_on(monkeypatch, flow_env, route=route, nth=1, db=db, kind="clip-compile")
    # The third project's result meets a dead API and is sent again once it is back.
    refused = kill_api_on(monkeypatch, flow_env, route=route, nth=3, after_answer=False)

    # One project at a time: nothing else (a claim) is in flight when the API dies.
    reports = run_until_done(clip_compile, concurrency=1)
    lost_answer.wait_restarted()
    refused.wait_restarted()

    assert lost_answer.answer_status == 200 and lost_answer.applied_at_kill == 1
    assert reports[-1].status == "completed", reports[-1].reason
    assert sum(r.applied for r in reports) == 3
    assert_compiled_once(flow_env, db, media_root, owners)
    replayed = db.rows("SELECT applied FROM audit WHERE idempotency_key = :k", k=lost_answer.key)
    assert [tuple(r) for r in replayed] == [(1,)]
    # A rerun finds nothing left to do and counts nothing.
    again = clip_compile(concurrency=1)
    assert (again.processed, again.applied) == (0, 0)
    assert_compiled_once(flow_env, db, media_root, owners)
    assert len(list((media_root / "compiled").glob("*.mp4"))) == 3  # no second copies


@pytest.mark.timeout(120)
def test_api_killed_after_a_claim_leaves_no_project_stranded(
    flow_env: LiveApi, media_root: Path, db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim is committed, then the API dies before the run hears it succeeded: the
    retried claim (same Idempotency-Key) gets its own answer back, and this run compiles
    the project instead of leaving it `compiling` until the lease runs out."""
    owners = compile_setup(flow_env, media_root, projects=1)
    claim = kill_api_on(monkeypatch, flow_env, method="PUT", route="/status", down_for=1.0)

    reports = run_until_done(clip_compile, concurrency=1)
    claim.wait_restarted()

    assert claim.answer_status == 200
    assert [(r.status, r.applied) for r in reports] == [("completed", 1)]
    assert_compiled_once(flow_env, db, media_root, owners)
