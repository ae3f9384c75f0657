"""The chunk engine against an in-memory API: chunks (task `.fn`), then whole runs under
Prefect's test server."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.logging import disable_run_logger

from api.schemas import BackfillKind, DurationResult, PendingItem, ReprocessMode
from flows.client import BackfillClient
from flows.compute.errors import MediaError
from flows.engine import (
    BackfillFailed,
    BackfillReport,
    ChunkRunner,
    ProgressUpdate,
    backfill_flow,
    process_chunk,
    progress_listener,
    run_backfill,
)
from flows.media import local_media
from flows.settings import ClientSettings
from flows.spec import (
    Backfill,
    BackfillParams,
    BatchSize,
    Concurrency,
    Job,
    Planned,
    Ratio,
    Skip,
)
from tests.flows.conftest import write_wav
from tests.flows.fake_api import FakeApi
from tests.flows.helpers import WARMUP_LOG, fake_duration, warm_up, wav_duration

KIND = BackfillKind.MEDIA_DURATION
FAKE = Backfill(kind=KIND, result_model=DurationResult, compute=fake_duration, open_file=None)


def settings_for(root: Path) -> ClientSettings:
    return ClientSettings(API_TOKEN="t", MEDIA_ROOT=root)


def items_of(uris: dict[int, str]) -> list[PendingItem]:
    return [PendingItem(record_id=r, revision=1, uri=u) for r, u in uris.items()]


# --- One chunk, through the task's .fn ------------------------------------------------------


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=2) as executor:
        yield executor


def test_chunk_posts_results_then_failures_and_goes_on(
    pool: ThreadPoolExecutor, tmp_path: Path
) -> None:
    uris = {1: "ok/1.5", 2: "corrupt/b.wav", 3: "negative/c.wav", 4: "ok/2"}
    api = FakeApi(KIND, uris)
    runner = ChunkRunner(FAKE, BackfillParams(), settings_for(tmp_path), api.client(), pool)

    with disable_run_logger():
        report = process_chunk.fn(runner, items_of(uris))

    assert api.values == {1: {"duration": 1.5}, 4: {"duration": 2.0}}
    assert api.errors == {
        2: "corrupt/b.wav has a corrupt header",
        3: "computed DurationResult is invalid: duration: Input should be greater than or "
        "equal to 0",
    }
    assert (report.first_id, report.last_id, report.items) == (1, 4, 4)
    assert (report.applied, report.unchanged, report.rejected, report.failed) == (2, 0, 0, 2)
    assert "<uri> has a corrupt header" in report.errors


def test_chunk_counts_unchanged_and_rejected(pool: ThreadPoolExecutor, tmp_path: Path) -> None:
    api = FakeApi(KIND, {1: "ok/1", 2: "ok/2"})
    api.values[1] = {"duration": 1.0}
    runner = ChunkRunner(FAKE, BackfillParams(), settings_for(tmp_path), api.client(), pool)
    items = items_of({1: "ok/1", 2: "ok/2", 9: "ok/9"})  # 9 is unknown to the server

    with disable_run_logger():
        report = process_chunk.fn(runner, items)

    assert (report.applied, report.unchanged, report.rejected, report.failed) == (1, 1, 1, 0)
    assert report.errors == ["record not found"]


def test_chunk_dry_run_writes_nothing(pool: ThreadPoolExecutor, tmp_path: Path) -> None:
    uris = {1: "ok/1", 2: "corrupt/x"}
    api = FakeApi(KIND, uris)
    params = BackfillParams(dry_run=True)
    runner = ChunkRunner(FAKE, params, settings_for(tmp_path), api.client(), pool)

    with disable_run_logger():
        report = process_chunk.fn(runner, items_of(uris))

    assert api.values == {} and api.attempts == {}
    assert api.batches == [{"items": [{"duration": 1.0}], "dry_run": True}]
    assert (report.applied, report.failed) == (1, 1)


def test_chunk_that_cannot_post_says_so_in_one_line(
    pool: ThreadPoolExecutor, tmp_path: Path
) -> None:
    """Returned, not raised (Prefect would log a raise with a traceback): the run stops on
    it and ends Failed with the reason."""
    api = FakeApi(KIND, {1: "ok/1"})
    api.faults["POST /backfills/media-duration"] = [httpx.Response(503)] * 3
    client = api.client(max_retries=2)
    runner = ChunkRunner(FAKE, BackfillParams(), settings_for(tmp_path), client, pool)

    with disable_run_logger():
        report = process_chunk.fn(runner, items_of({1: "ok/1"}))

    assert report.unfinished == (
        "503 Service Unavailable on POST /api/v1/backfills/media-duration: Service "
        "Unavailable; gave up after 2 retries"
    )
    assert (report.items, report.applied) == (0, 0)


def test_chunk_lets_a_compute_bug_fail_the_chunk(pool: ThreadPoolExecutor, tmp_path: Path) -> None:
    api = FakeApi(KIND, {1: "crash/x"})
    runner = ChunkRunner(FAKE, BackfillParams(), settings_for(tmp_path), api.client(), pool)

    with disable_run_logger(), pytest.raises(RuntimeError, match="bug while computing"):
        process_chunk.fn(runner, items_of({1: "crash/x"}))
    assert api.batches == []


def claim_by_uri(client: BackfillClient, job: Job[BackfillParams]) -> Job[BackfillParams] | Skip:
    """A claim through the one client: `taken/...` is another run's, `gone/...` is bad."""
    uri = job.item.uri or ""
    if uri.startswith("taken/"):
        return Skip(f"record {job.item.record_id} is another run's")
    if uri.startswith("gone/"):
        raise MediaError(f"{uri} has no media")
    coverage = client.coverage()  # what compute needs, fetched here and handed over
    return replace(job, context=coverage)


def planned_in_dry_run(job: Job[BackfillParams]) -> DurationResult | Planned:
    assert job.context is not None, "claimed jobs carry what claim fetched"
    if job.params.dry_run:
        return Planned(note="would write")
    return DurationResult(record_id=job.item.record_id, duration=1.0)


CLAIMING = replace(FAKE, compute=planned_in_dry_run, claim=claim_by_uri)


@pytest.mark.parametrize("dry_run", [False, True])
def test_chunk_claims_skips_and_plans_through_the_spec_hooks(
    pool: ThreadPoolExecutor, tmp_path: Path, dry_run: bool
) -> None:
    uris = {1: "ok/1", 2: "taken/2", 3: "gone/3", 4: "ok/4"}
    api = FakeApi(KIND, uris)
    params = BackfillParams(dry_run=dry_run)
    runner = ChunkRunner(CLAIMING, params, settings_for(tmp_path), api.client(), pool)

    with disable_run_logger():
        report = process_chunk.fn(runner, items_of(uris))

    # 1 and 4 computed (posted, or planned and not posted in a dry run), 2 left alone
    # (unchanged, no failure), 3 a per-record failure from the claim.
    assert (report.applied, report.unchanged, report.failed) == (2, 1, 1)
    assert report.errors == ["<uri> has no media"]
    if dry_run:
        assert api.batches == [] and api.attempts == {}
    else:
        assert api.values == {1: {"duration": 1.0}, 4: {"duration": 1.0}}
        assert api.errors == {3: "gone/3 has no media"}


# --- Whole runs -----------------------------------------------------------------------------

ACTIVE: dict[str, Any] = {}


class FakeParams(BackfillParams):
    """Small chunks, a lenient ratio, two chunks in flight: the engine's paths in few records."""

    batch_size: BatchSize = 3
    max_failure_ratio: Ratio = 0.5
    concurrency: Concurrency = 2


@backfill_flow(KIND, FakeParams)
def fake_backfill(params: FakeParams) -> BackfillReport:
    """The engine on whatever `use` activated."""
    return run_backfill(
        ACTIVE["spec"], params, settings=ACTIVE["settings"], client=ACTIVE["client"]
    )


@pytest.fixture
def use(prefect_api_url: str, tmp_path: Path) -> Iterator[Any]:
    """Point `fake_backfill` at a FakeApi (and optionally another spec)."""

    def activate(api: FakeApi, spec: Backfill[Any, Any] = FAKE, **client: Any) -> FakeApi:
        ACTIVE.update(spec=spec, settings=settings_for(tmp_path), client=api.client(**client))
        return api

    yield activate
    ACTIVE.clear()


def ok_records(n: int) -> dict[int, str]:
    return {i: f"ok/{i / 10}" for i in range(1, n + 1)}


def test_run_pages_by_keyset_and_writes_every_record(use: Any) -> None:
    api = use(FakeApi(KIND, ok_records(25)))
    api.page_cap = 4
    updates: list[ProgressUpdate] = []

    with progress_listener(updates.append):
        report = fake_backfill(batch_size=3)

    assert api.values == {i: {"duration": i / 10} for i in range(1, 26)}
    assert [int(p["after_id"]) for p in api.pages] == [0, 4, 8, 12, 16, 20, 24]
    assert report.status == "completed" and report.reason is None
    assert (report.processed, report.applied, report.failed, report.chunks) == (25, 25, 0, 9)
    assert report.records_per_second > 0
    assert updates[0].processed == 0 and updates[0].expected == 25
    assert [u.processed for u in updates] == sorted(u.processed for u in updates)
    assert updates[-1].processed == 25 and updates[-1].applied == 25


def test_limit_then_rerun_continues_where_it_stopped(use: Any) -> None:
    api = use(FakeApi(KIND, ok_records(12)))

    first = fake_backfill(limit=5)
    assert first.processed == 5 and sorted(api.values) == [1, 2, 3, 4, 5]

    second = fake_backfill()
    assert second.processed == 7 and sorted(api.values) == list(range(1, 13))

    third = fake_backfill()
    assert third.processed == 0 and third.status == "completed"


def test_bad_items_are_failures_and_the_run_completes(use: Any) -> None:
    uris = ok_records(8) | {9: "corrupt/a.wav", 10: "corrupt/b.wav"}
    api = use(FakeApi(KIND, uris))

    report = fake_backfill(max_failure_ratio=0.25)

    assert report.status == "completed"
    assert (report.applied, report.failed) == (8, 2)
    assert [(e.error, e.count) for e in report.top_errors] == [("<uri> has a corrupt header", 2)]
    assert api.attempts == {9: 1, 10: 1}


def test_mode_failed_reprocesses_the_ledger(use: Any) -> None:
    uris = ok_records(6) | {7: "corrupt/a.wav"}
    api = use(FakeApi(KIND, uris))
    fake_backfill()
    api.uris[7] = "ok/7.5"  # the file was repaired

    report = fake_backfill(mode=ReprocessMode.FAILED)

    assert report.processed == 1 and api.values[7] == {"duration": 7.5}
    assert api.pages[-1]["mode"] == "failed"
    # mode=all takes every record again, done or not.
    assert fake_backfill(mode=ReprocessMode.ALL).processed == 7
    assert "compute_version" not in api.pages[-1]


def test_failure_ratio_fails_the_run_with_a_report(use: Any) -> None:
    uris = ok_records(7) | {8: "corrupt/a", 9: "corrupt/b", 10: "negative/c"}
    use(FakeApi(KIND, uris))

    state = fake_backfill(max_failure_ratio=0.2, return_state=True)

    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, BackfillFailed)
    assert error.report.failed == 3 and error.report.applied == 7
    assert error.report.reason == (
        "3 of 10 records failed or were rejected, more than max_failure_ratio=0.2"
    )


def test_a_chunk_failing_after_retries_fails_the_run_and_stops_paging(use: Any) -> None:
    api = use(FakeApi(KIND, ok_records(40)), max_retries=1)
    api.faults["POST /backfills/media-duration"] = [httpx.Response(503)] * 100

    state = fake_backfill(batch_size=2, concurrency=2, return_state=True)

    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, BackfillFailed)
    assert error.report.failed_chunks >= 1 and api.values == {}
    assert error.report.reason is not None
    assert error.report.reason.startswith("a chunk failed: 503 Service Unavailable")
    # it stopped submitting: far fewer than the 20 chunks were tried
    assert 100 - len(api.faults["POST /backfills/media-duration"]) <= 2 * 4


def test_dry_run_reports_and_writes_nothing(use: Any) -> None:
    api = use(FakeApi(KIND, ok_records(5) | {6: "corrupt/x"}))

    report = fake_backfill(dry_run=True)

    assert report.dry_run and (report.applied, report.failed) == (5, 1)
    assert api.values == {} and api.attempts == {}
    assert all(batch["dry_run"] for batch in api.batches)


def test_shards_split_the_work(use: Any) -> None:
    api = use(FakeApi(KIND, ok_records(10)))

    report = fake_backfill(shard_index=1, shard_count=2)

    assert report.processed == 5 and sorted(api.values) == [1, 3, 5, 7, 9]
    assert {p["shard_count"] for p in api.pages} == {"2"}


def test_run_publishes_progress_and_summary_artifacts(use: Any, prefect_api_url: str) -> None:
    use(FakeApi(KIND, ok_records(6) | {7: "corrupt/a"}))

    state = fake_backfill(return_state=True)

    run_id = str(state.state_details.flow_run_id)
    found = httpx.post(
        f"{prefect_api_url}/artifacts/filter",
        json={"artifacts": {"flow_run_id": {"any_": [run_id]}}},
    ).json()
    by_type = {a["type"]: a for a in found}
    assert by_type["progress"]["key"] == "media-duration-progress"
    assert by_type["progress"]["data"] == 100.0
    summary = by_type["table"]
    assert summary["key"] == "media-duration-summary"
    table = summary["data"]
    rows = {
        row["metric"]: row["value"]
        for row in (json.loads(table) if isinstance(table, str) else table)
    }
    assert rows["applied"] == 6 and rows["failed"] == 1 and rows["status"] == "completed"
    assert rows["error x1"] == "<uri> has a corrupt header"


def test_process_executor_warms_each_worker_once(
    use: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path
    uris = {}
    expected = {}
    for i in range(1, 13):
        expected[i] = write_wav(root / f"a/{i}.wav", frames=800 * i, rate=8000)
        uris[i] = f"a/{i}.wav"
    log = tmp_path / "warmup.log"
    monkeypatch.setenv(WARMUP_LOG, str(log))
    spec = replace(
        FAKE, compute=wav_duration, open_file=local_media, executor="process", warmup=warm_up
    )
    api = use(FakeApi(KIND, uris), spec=spec)

    report = fake_backfill(batch_size=4)

    assert report.applied == 12
    assert api.values == {i: {"duration": d} for i, d in expected.items()}
    pids = log.read_text().split()
    assert 1 <= len(pids) <= (os.cpu_count() or 1)
    assert len(set(pids)) == len(pids) and str(os.getpid()) not in pids
