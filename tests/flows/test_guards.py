"""The circuit breaker (a run pauses itself, Resume continues it with nothing redone) and
verification before "complete" (a stored value altered behind the run's back fails it).

Real API (uvicorn over SQLite), real WAV files and broken ones, Prefect's test server (a real
server process): the Paused state, its message, the artifacts and the resume go through it."""

from __future__ import annotations

import contextvars
import json
import os
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect import tags
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
)
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.sorting import ArtifactSort

import flows.engine
from api.schemas import BackfillKind, DurationResult, MediaIn
from flows.breaker import CircuitBreaker
from flows.client import BackfillClient
from flows.engine import BackfillFailed, BackfillReport, ProgressUpdate, progress_listener
from flows.media_duration import media_duration
from flows.spec import Mismatch
from flows.verify import Reservoir, sample_size
from tests.conftest import ROOT, LiveApi
from tests.flows.conftest import write_wav

#: Seconds to wait for the run to pause (a busy 2-core machine).
PAUSE_DEADLINE = 240.0


# --- The breaker and the sample, alone ------------------------------------------------------


def test_window_trips_only_when_full_and_over_the_ratio() -> None:
    breaker = CircuitBreaker(window=10, ratio=0.5, failed_chunks=0)
    assert breaker.record(items=5, bad=5) is None  # not full yet: no trend
    assert breaker.record(items=5, bad=0) is None  # 5 of 10: not above 0.5
    assert breaker.record(items=5, bad=1) is None  # the first 5 left the window: 1 of 10
    assert breaker.bad == 1
    reason = breaker.record(items=5, bad=5)
    assert reason == (
        "circuit breaker: 6 of the last 10 records failed, more than pause_failure_ratio=0.5"
    )
    breaker.reset()
    assert breaker.record(items=9, bad=9) is None  # a fresh window after a resume


def test_consecutive_failed_chunks_trip_and_a_good_record_resets_the_count() -> None:
    breaker = CircuitBreaker(window=0, ratio=0.5, failed_chunks=3)
    assert breaker.record(items=4, bad=4) is None
    assert breaker.record(items=4, bad=4) is None
    assert breaker.record(items=4, bad=3) is None  # one record went through
    assert breaker.record(items=4, bad=4) is None
    assert breaker.record(items=4, bad=4) is None
    assert breaker.record(items=4, bad=4) == (
        "circuit breaker: 3 chunks in a row failed entirely (pause_failed_chunks=3)"
    )
    off = CircuitBreaker(window=0, ratio=0.5, failed_chunks=0)
    assert not off.enabled
    assert all(off.record(items=10, bad=10) is None for _ in range(50))


def test_sample_size_and_reservoir() -> None:
    assert [sample_size(0.01, n) for n in (0, 1, 99, 101, 10_000, 10**7)] == [0, 1, 1, 2, 100, 100]
    assert sample_size(0.0, 1000) == 0 and sample_size(1.0, 7) == 7
    from api.schemas import PendingItem

    reservoir = Reservoir()
    reservoir.offer(PendingItem(record_id=i, uri=f"{i}.wav", revision=1) for i in range(1, 5001))
    assert reservoir.seen == 5000 and len(reservoir.items) == 100
    drawn = reservoir.draw(0.01)
    assert len(drawn) == 50 and len({i.record_id for i in drawn}) == 50
    assert max(i.record_id for i in drawn) > 100  # not just the first records offered


# --- Whole runs -----------------------------------------------------------------------------


def register(api: LiveApi, root: Path, paths: list[Path]) -> list[int]:
    items = [MediaIn(uri=p.relative_to(root).as_posix(), media_type="audio") for p in paths]
    with BackfillClient(api.url, api.admin_token) as client:
        result = client.register_media(items)
    return [i.id for i in result.items if i.id is not None]


def wav_records(api: LiveApi, root: Path, folder: str, frames: list[int]) -> list[int]:
    """A WAV of each frame count (8 kHz) under `root/folder`, registered: their ids, in order."""
    paths = [root / f"{folder}/{i:03d}.wav" for i in range(len(frames))]
    for path, count in zip(paths, frames, strict=True):
        write_wav(path, frames=count)
    return register(api, root, paths)


def corrupt(path: Path) -> None:
    """Broken bytes under a .wav name: a RIFF header and then junk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + os.urandom(300))


def query(api: LiveApi, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(api.database_url.removeprefix("sqlite:///")) as conn:
        return conn.execute(sql).fetchall()


def in_background(work: Callable[[], Any]) -> Callable[[], Any]:
    """Run `work` in a thread; the returned function joins it and re-raises its error."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # handed to the test's thread
            outcome["error"] = exc

    context = contextvars.copy_context()  # Prefect's settings (the test server's URL) with it
    thread = threading.Thread(target=context.run, args=(target,), daemon=True)
    thread.start()

    def join() -> Any:
        thread.join(timeout=PAUSE_DEADLINE)
        assert not thread.is_alive(), "the background step did not finish"
        if "error" in outcome:
            raise outcome["error"]
        return outcome.get("value")

    return join


def wait_paused(flow_name: str, tag: str) -> Any:
    """The flow run of `flow_name` tagged `tag` that is Paused, once it is (the run's Prefect
    server is shared by the xdist workers: another test may have a run of the flow paused)."""
    deadline = time.monotonic() + PAUSE_DEADLINE
    paused = FlowRunFilter(
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])),
        tags=FlowRunFilterTags(all_=[tag]),
    )
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = [r for r in client.read_flow_runs(flow_run_filter=paused) if r.name]
            for run in runs:
                flow = client.read_flow(run.flow_id)
                if flow.name == flow_name:
                    return run
            time.sleep(0.2)
    raise AssertionError(f"no {flow_name} run paused in {PAUSE_DEADLINE:.0f} s")


def artifact(flow_run_id: UUID, key: str) -> Any:
    with get_client(sync_client=True) as client:
        (latest, *_) = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
                key=ArtifactFilterKey(any_=[key]),
            ),
            sort=ArtifactSort.CREATED_DESC,
        )
    return latest.data


def chunk_ranges(flow_run_id: UUID) -> list[tuple[int, int]]:
    """(first id, last id) of every chunk task run of the flow run, in id order."""
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(
            task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run_id]))
        )
    ranges = []
    for task in tasks:
        if task.name.startswith("media-duration-"):
            first, last = task.name.removeprefix("media-duration-").split("-")
            ranges.append((int(first), int(last)))
    return sorted(ranges)


@pytest.mark.e2e
@pytest.mark.usefixtures("prefect_api_url")
def test_half_corrupt_corpus_pauses_and_resume_continues_with_nothing_redone(
    client_env: LiveApi, media_root: Path, prefect_api_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(flows.engine, "PAUSE_POLL_SECONDS", 0.5)
    # 160 records: 40 good, 80 broken, 40 good (half the corpus is corrupt).
    paths = [media_root / f"c/{i:03d}.wav" for i in range(160)]
    for i, path in enumerate(paths):
        if 40 <= i < 120:
            corrupt(path)
        else:
            write_wav(path, frames=80 * (i + 1))
    ids = register(client_env, media_root, paths)
    by_id = dict(zip(ids, paths, strict=True))

    def operator() -> dict[str, Any]:
        """Wait for the pause, read what the run says, repair the files, resume it."""
        run = wait_paused("media-duration", tag)
        seen = {"id": run.id, "state": run.state.name, "message": run.state.message}
        seen["paused_artifact"] = artifact(run.id, "media-duration-paused")
        failed = {r for (r,) in query(client_env, "SELECT record_id FROM backfill_failures")}
        seen["failed_before_resume"] = failed
        for record_id, path in by_id.items():  # the operator fixes the cause...
            if record_id not in failed and 40 <= paths.index(path) < 120:
                write_wav(path, frames=800)
        done = subprocess.run(  # ... and resumes the run, as docs/operations.md says
            ["uv", "run", "backfill", "resume", str(run.id)],
            cwd=ROOT,
            env=os.environ | {"PREFECT_API_URL": prefect_api_url},
            capture_output=True,
            text=True,
            timeout=PAUSE_DEADLINE,
        )
        seen["resume"] = (done.returncode, done.stdout + done.stderr)
        return seen

    tag = f"test-{uuid.uuid4().hex[:8]}"
    join = in_background(operator)
    with tags(tag):
        state = media_duration(
            batch_size=10,
            concurrency=2,
            pause_window=40,
            pause_failure_ratio=0.5,
            pause_failed_chunks=0,
            max_failure_ratio=0.5,
            verify_sample=1.0,
            return_state=True,
        )
    seen = join()

    # It paused itself, on the Prefect server, with the reason and the top errors.
    assert seen["state"] == "Paused"
    assert seen["message"].startswith("circuit breaker: ")
    assert "of the last 40 records failed, more than" in seen["message"]
    assert "pause_failure_ratio=0.5" in seen["message"]
    assert seen["message"] in seen["paused_artifact"]
    assert "| count | error |" in seen["paused_artifact"]
    assert f"uv run backfill resume {seen['id']}" in seen["paused_artifact"]
    assert seen["resume"][0] == 0, seen["resume"][1]
    assert "Running" in seen["resume"][1]
    failed = seen["failed_before_resume"]
    assert 20 < len(failed) <= 40  # the window tripped after 30 bad (one chunk in flight more)

    # It continued and completed: every record once, nothing redone.
    assert state.is_completed(), state.message
    report: BackfillReport = state.result()
    assert report.pauses == 1
    assert (report.processed, report.failed, report.applied) == (
        160,
        len(failed),
        160 - len(failed),
    )
    ranges = chunk_ranges(seen["id"])
    covered = [i for first, last in ranges for i in range(first, last + 1)]
    assert covered == sorted(ids), "a record was processed twice, or not at all"
    attempts = query(client_env, "SELECT record_id, attempts FROM backfill_failures")
    assert dict(attempts) == dict.fromkeys(failed, 1)
    audit = "SELECT SUM(applied), SUM(unchanged) FROM audit WHERE kind = '{}'"
    assert query(client_env, audit.format("media-duration")) == [(160 - len(failed), 0)]
    assert query(client_env, audit.format("media-duration/failures")) == [(len(failed), 0)]
    durations = dict(query(client_env, "SELECT id, duration FROM media"))
    assert {i for i, d in durations.items() if d is not None} == set(ids) - failed
    # ... and verified what it applied (all of it: verify_sample=1.0, 100 at most).
    assert (report.verified, report.verified_ok, report.mismatches) == (100, 100, [])
    rows = json.loads(artifact(seen["id"], "media-duration-summary"))
    values = {row["metric"]: row["value"] for row in rows}
    assert (values["pauses"], values["verified"], values["verified ok"]) == (1, 100, 100)
    # The record of the run holds the pause and the resume, with the breaker's reason.
    events = query(
        client_env,
        "SELECT e.event, e.reason, r.state FROM run_events e JOIN runs r ON r.id = e.run_id "
        f"WHERE r.flow_run_id = '{seen['id']}' ORDER BY e.id",
    )
    assert [(event, state) for event, _, state in events] == [
        ("pause", "completed"),
        ("resume", "completed"),
    ]
    assert events[0][1] == seen["message"]


@pytest.mark.e2e
@pytest.mark.usefixtures("prefect_api_url")
def test_a_pause_nobody_resumes_fails_the_run_with_the_reason(
    client_env: LiveApi, media_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(flows.engine, "PAUSE_POLL_SECONDS", 0.5)
    paths = [media_root / f"x/{i}.wav" for i in range(12)]
    for path in paths:
        corrupt(path)
    register(client_env, media_root, paths)

    state = media_duration(
        batch_size=2, concurrency=1, pause_failed_chunks=2, pause_timeout=2, return_state=True
    )

    assert state.is_failed()
    assert state.message == (
        "circuit breaker: 2 chunks in a row failed entirely (pause_failed_chunks=2); "
        "paused and not resumed within pause_timeout=2 s"
    )
    error = state.result(raise_on_failure=False)
    assert isinstance(error, BackfillFailed)
    assert error.report.processed == 4  # it stopped: the other 8 stay pending
    assert error.report.pauses == 0


@pytest.mark.e2e
@pytest.mark.usefixtures("prefect_api_url")
def test_a_stored_value_altered_behind_the_runs_back_fails_verification(
    client_env: LiveApi, media_root: Path
) -> None:
    ids = wav_records(client_env, media_root, "v", [1000 * i for i in range(1, 7)])  # 0.125 s, ...
    victim = ids[3]

    def alter(update: ProgressUpdate) -> None:
        """Once every record is applied, and before verification, someone else writes."""
        if update.processed == len(ids):
            with BackfillClient(client_env.url, client_env.admin_token) as other:
                result = other.post_results(
                    BackfillKind.MEDIA_DURATION, [DurationResult(record_id=victim, duration=9.0)]
                )
            assert result.applied == 1

    with progress_listener(alter):
        state = media_duration(verify_sample=1.0, return_state=True)

    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, BackfillFailed)
    report = error.report
    assert (report.applied, report.verified, report.verified_ok) == (6, 6, 5)
    assert report.mismatches == [
        Mismatch(record_id=victim, field="duration", stored=9.0, recomputed=0.5)
    ]
    assert state.message == (
        "verification failed: 1 of 6 sampled records differ from what the API stores: "
        f"record {victim} duration: stored 9.0, recomputed 0.5"
    )
    rows = json.loads(artifact(state.state_details.flow_run_id, "media-duration-summary"))
    assert {"metric": "mismatch", "value": str(report.mismatches[0])} in rows


@pytest.mark.e2e
@pytest.mark.usefixtures("prefect_api_url")
def test_a_clean_run_verifies_its_sample_and_a_dry_run_verifies_nothing(
    client_env: LiveApi, media_root: Path
) -> None:
    wav_records(client_env, media_root, "ok", [100 + i for i in range(30)])

    dry = media_duration(dry_run=True, verify_sample=1.0)
    assert (dry.applied, dry.verified) == (30, 0)

    report = media_duration(batch_size=7, verify_sample=0.1)  # 10 % of 30: 3 records

    assert report.status == "completed" and report.applied == 30
    assert (report.verified, report.verified_ok, report.mismatches) == (3, 3, [])
    assert media_duration(verify_sample=1.0).verified == 0  # nothing left to apply


def test_docs_show_the_breaker_and_verification() -> None:
    operations = (ROOT / "docs" / "operations.md").read_text()
    cli = (ROOT / "docs" / "cli.md").read_text()
    assert "\n## Circuit breaker\n" in operations and "\n## Verification\n" in operations
    assert "uv run backfill resume FLOW_RUN_ID" in operations  # what the pause test runs
    for field in ("pause_window", "pause_failure_ratio", "pause_failed_chunks", "pause_timeout"):
        assert f"`--{field.replace('_', '-')} " in cli and f"`{field}`" in operations
    assert "`--verify-sample R` | `verify_sample`" in cli
