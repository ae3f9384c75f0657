"""One run fanned out over the work pool (`shards=N`): the parent starts N shard child runs of
its deployment's `-shards` twin, two process workers take them, every record is done exactly
once; one shard failing fails the parent, and a UI Retry of the parent reruns that shard only.

The pure parts (a shard's parameters, the combined report) are tested without a server.
"""

from __future__ import annotations

import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from api.schemas import BackfillKind, MediaIn
from flows.engine import BackfillReport, ErrorCount
from flows.fanout import (
    ShardOutcome,
    combine,
    idempotency_key,
    shard_limit,
    shard_parameters,
    shards_table,
)
from flows.media_duration import DurationParams
from tests.deploy import conftest as harness

KIND = BackfillKind.MEDIA_DURATION
FAN_OUT = "uv run prefect deployment run 'media-duration/nightly' --param shards=2 --watch"
#: Seconds a fanned-out run may take (three flow-run processes on a busy 2-core machine).
FAN_OUT_TIMEOUT = 2 * harness.RUN_TIMEOUT


# --- Without a server ----------------------------------------------------------------------


def test_shard_limits_add_up_to_the_parent_limit() -> None:
    assert [shard_limit(10, 3, i) for i in range(3)] == [4, 3, 3]
    assert [shard_limit(None, 3, i) for i in range(3)] == [None, None, None]
    assert sum(shard_limit(1001, 7, i) or 0 for i in range(7)) == 1001


def test_shard_parameters_are_the_parents_as_one_shard() -> None:
    params = DurationParams(
        shards=3, limit=10, batch_size=7, dry_run=True, max_records_per_second=30.0
    )
    assert shard_parameters(params, 2) == {
        "batch_size": 7,
        "limit": 3,
        "dry_run": True,
        "media_type": None,
        "mode": "missing",
        "only_failed": False,
        "shard_index": 2,
        "shard_count": 3,
        "shards": 1,
        "max_failure_ratio": 0.1,
        "concurrency": None,
        "pause_window": 200,
        "pause_failure_ratio": 0.5,
        "pause_failed_chunks": 3,
        "pause_timeout": 43200,
        "verify_sample": 0.01,
        "plan_id": None,  # a plan's shards: each child applies its share of the plan
        "max_records_per_second": 10.0,  # a third of the run's pace each
    }
    # Each child is valid, and runs (does not fan out again).
    assert DurationParams(**shard_parameters(params, 2)).shards == 1
    assert idempotency_key("run-id", 2, 3) == "run-id/shard-2-of-3"


def test_shards_reject_parameters_that_do_not_fit() -> None:
    with pytest.raises(ValueError, match="shard_count"):
        DurationParams(shards=2, shard_count=2)
    with pytest.raises(ValueError, match="limit must be at least shards"):
        DurationParams(shards=4, limit=3)
    with pytest.raises(ValueError):
        DurationParams(shards=0)


def _report(**counts: Any) -> BackfillReport:
    return BackfillReport(kind=KIND, status="completed", dry_run=False, **counts)


def test_the_summary_table_reads_back_as_the_report() -> None:
    report = BackfillReport(
        kind=KIND,
        status="failed",
        reason="3 of 4 records failed",
        dry_run=True,
        processed=4,
        applied=1,
        unchanged=0,
        rejected=0,
        failed=3,
        chunks=2,
        failed_chunks=0,
        top_errors=[ErrorCount(error="<uri> is empty", count=3)],
        seconds=1.25,
        records_per_second=3.2,
    )
    assert BackfillReport.from_table(KIND, report.table()) == report
    planned = report.model_copy(
        update={"plan_id": "Xq3v9KpA", "skipped": 2, "changed_since_plan": 1}
    )
    assert BackfillReport.from_table(KIND, planned.table()) == planned


def _shard(
    index: int, state: str, report: BackfillReport | None = None, message: str | None = None
) -> ShardOutcome:
    """Shard `index` of 3 that ended in `state` (flow run ids a, b, c)."""
    return ShardOutcome(
        index=index,
        flow_run_id="abc"[index],
        name=f"run-shard-{index}-of-3",
        state=state,
        completed=state == "Completed",
        report=report,
        message=message,
    )


def test_combine_sums_the_shards_and_names_the_failed_ones() -> None:
    ok = _shard(
        0,
        "Completed",
        report=_report(
            processed=5,
            applied=4,
            unchanged=1,
            chunks=1,
            top_errors=[ErrorCount(error="x", count=1)],
        ),
    )
    bad_report = _report(processed=6, applied=1, failed=5, chunks=2, failed_chunks=0)
    bad_report = bad_report.model_copy(
        update={
            "status": "failed",
            "reason": "5 of 6 records failed",
            "top_errors": [ErrorCount(error="y", count=5), ErrorCount(error="x", count=1)],
        }
    )
    bad = _shard(1, "Failed", report=bad_report)
    crashed = _shard(2, "Crashed", message="process exited -9")

    whole = combine(KIND, [ok], dry_run=False, flow_run_id="p", seconds=2.0)
    assert (whole.status, whole.reason, whole.processed, whole.records_per_second) == (
        "completed",
        None,
        5,
        2.5,
    )

    report = combine(KIND, [ok, bad, crashed], dry_run=False, flow_run_id="p", seconds=4.0)
    assert report.status == "failed"
    assert report.reason == (
        "2 of 3 shards did not complete: shard 1 (run-shard-1-of-3) Failed: 5 of 6 records "
        "failed; shard 2 (run-shard-2-of-3) Crashed: process exited -9"
    )
    assert (report.processed, report.applied, report.unchanged, report.failed) == (11, 5, 1, 5)
    assert (report.chunks, report.flow_run_id) == (3, "p")
    assert report.top_errors == [ErrorCount(error="y", count=5), ErrorCount(error="x", count=2)]
    table = shards_table([ok, bad, crashed])
    assert [row["state"] for row in table] == ["Completed", "Failed", "Crashed", "1 of 3 completed"]
    assert table[2]["processed"] is None and table[3]["processed"] == 11


# --- With a Prefect server and two process workers ----------------------------------------


@pytest.fixture(scope="module")
def second_worker(
    prefect_server: harness.PrefectServer,
    deploy_api: harness.DeployApi,
    worker: harness.Worker,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[harness.Worker]:
    """Another `prefect worker start --pool backfills`: the fan-out's children go to any."""
    log_path = tmp_path_factory.mktemp("worker-2") / "worker.log"
    # Polls less often than the first worker: each poll is a write to the Prefect server's
    # SQLite file, which two workers at 1 s kept locked on a busy machine.
    with harness.running_worker(
        prefect_server, deploy_api, log_path, name="fanout-second", query_seconds=3
    ) as second:
        yield second


@pytest.fixture
def fan_out_api(
    deployed: harness.Deployed, deploy_api: harness.DeployApi, second_worker: harness.Worker
) -> harness.DeployApi:
    """The live API, emptied, with the pool's deployments and two workers to take the shards."""
    deploy_api.reset()
    return deploy_api


def write_wav(path: Path, frames: int, rate: int = 8000) -> float:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(b"\x00\x00" * frames)
    return frames / rate


def register_wavs(deploy_api: harness.DeployApi, folder: str, count: int) -> dict[int, float]:
    """`count` WAVs of known length, registered: record id -> duration."""
    from flows.client import BackfillClient

    durations = {}
    for i in range(count):
        uri = f"{folder}/{i:04d}.wav"
        durations[uri] = write_wav(deploy_api.media_root / uri, frames=800 + 37 * i)
    with BackfillClient(deploy_api.api.url, deploy_api.api.admin_token) as client:
        client.register_media([MediaIn(uri=uri, media_type="audio") for uri in durations])
    ids = dict(deploy_api.query("SELECT uri, id FROM media"))
    return {int(ids[uri]): seconds for uri, seconds in durations.items()}


def children_of(client: Any, parent_id: str) -> list[Any]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
    from prefect.client.schemas.sorting import FlowRunSort

    return list(
        client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id])
            ),
            sort=FlowRunSort.NAME_ASC,
        )
    )


def audit_by_run(deploy_api: harness.DeployApi) -> dict[str, tuple[int, int]]:
    rows = deploy_api.query(
        "SELECT flow_run_id, sum(applied), sum(unchanged) FROM audit "
        "WHERE kind = 'media-duration' AND NOT dry_run GROUP BY flow_run_id"
    )
    return {str(run): (int(applied), int(unchanged)) for run, applied, unchanged in rows}


def artifact_rows(
    prefect_server: harness.PrefectServer, run_id: str, key: str
) -> list[dict[str, Any]]:
    import json

    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )
    from prefect.client.schemas.sorting import ArtifactSort

    with prefect_server.client() as client:
        (latest, *_) = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]),
                key=ArtifactFilterKey(any_=[key]),
            ),
            sort=ArtifactSort.CREATED_DESC,
        )
    data = latest.data
    rows: list[dict[str, Any]] = json.loads(data) if isinstance(data, str) else data
    return rows


@pytest.mark.e2e
def test_fan_out_over_two_workers_does_every_record_once(
    prefect_server: harness.PrefectServer, fan_out_api: harness.DeployApi
) -> None:
    deploy_api = fan_out_api
    total = 301
    durations = register_wavs(deploy_api, "fanout", total)

    started = time.monotonic()
    done = prefect_server.cli(FAN_OUT, timeout=FAN_OUT_TIMEOUT)
    seconds = time.monotonic() - started
    assert "Flow run finished successfully in 'Completed'" in done.stdout
    parent = harness.flow_run_id(done.stdout)

    with prefect_server.client() as client:
        children = children_of(client, parent)
        twin = client.read_deployment_by_name("media-duration/nightly-shards")
        parent_run = client.read_flow_run(parent)
    # Two shard runs of the twin deployment (no schedule, no limit), both completed.
    assert len(children) == 2
    assert {c.deployment_id for c in children} == {twin.id}
    assert twin.schedules == [] and twin.global_concurrency_limit is None
    assert twin.work_pool_name == "backfills"
    assert [c.parameters["shard_index"] for c in children] == [0, 1]
    assert all(c.parameters["shard_count"] == 2 and c.parameters["shards"] == 1 for c in children)
    assert all(c.state.is_completed() and c.run_count == 1 for c in children)
    # Neither waited for a concurrency slot (the nightly limit is the parent's).
    with prefect_server.client() as client:
        history = {c.name: [st.name for st in client.read_flow_run_states(c.id)] for c in children}
    assert all("AwaitingConcurrencySlot" not in names for names in history.values()), history
    workers = {r.labels.get("prefect.worker.name") for r in [parent_run, *children]}

    # Every record exactly once: each shard run applied its own records (id % 2), nothing
    # twice, every duration right.
    audit = audit_by_run(deploy_api)
    expected = {
        str(c.id): (sum(1 for i in durations if i % 2 == c.parameters["shard_index"]), 0)
        for c in children
    }
    assert audit == expected
    assert deploy_api.query("SELECT count(*) FROM backfill_failures") == [(0,)]
    stored = dict(deploy_api.query("SELECT id, duration FROM media"))
    assert stored == pytest.approx(durations, abs=1e-6)

    # The parent's artifacts: per-shard table with a total, and the combined summary.
    shards = artifact_rows(prefect_server, parent, "media-duration-shards")
    assert [row["state"] for row in shards] == ["Completed", "Completed", "2 of 2 completed"]
    assert [row["applied"] for row in shards] == [*(n for n, _ in expected.values()), total]
    summary = {
        r["metric"]: r["value"]
        for r in artifact_rows(prefect_server, parent, "media-duration-summary")
    }
    assert summary["status"] == "completed" and summary["applied"] == total
    print(
        f"\nfan-out: {total} records, shards=2, {seconds:.1f}s from `prefect deployment run` "
        f"to Completed; per child {[n for n, _ in expected.values()]}; workers {sorted(map(str, workers))}"
    )


@pytest.mark.e2e
def test_a_failed_shard_fails_the_parent_and_a_retry_reruns_only_it(
    prefect_server: harness.PrefectServer, fan_out_api: harness.DeployApi
) -> None:
    from prefect.states import Scheduled

    deploy_api = fan_out_api
    durations = register_wavs(deploy_api, "retry", 40)
    # Break every record of shard 1 (odd ids): not media, so each fails and shard 1 passes
    # its max_failure_ratio.
    broken = {}
    for record_id, uri in deploy_api.query("SELECT id, uri FROM media"):
        if record_id % 2 == 1:
            path = deploy_api.media_root / uri
            broken[path] = path.read_bytes()
            path.write_bytes(b"not a wav file at all")

    done = prefect_server.cli(FAN_OUT, check=False, timeout=FAN_OUT_TIMEOUT)
    assert done.returncode == 1, done.stdout + done.stderr
    parent = harness.flow_run_id(done.stdout)
    with prefect_server.client() as client:
        first = {c.parameters["shard_index"]: c for c in children_of(client, parent)}
        state = client.read_flow_run(parent).state
    assert sorted(first) == [0, 1]
    assert first[0].state.is_completed() and first[1].state.is_failed()
    assert state.is_failed()
    assert state.message.startswith("1 of 2 shards did not complete: shard 1 (")
    assert "records failed or were rejected" in state.message
    audit_before = audit_by_run(deploy_api)
    assert audit_before[str(first[0].id)] == (20, 0)

    # Fix the files, then Retry the parent the way the UI's button does.
    for path, data in broken.items():
        path.write_bytes(data)
    with prefect_server.client() as client:
        client.set_flow_run_state(
            parent, Scheduled(name="AwaitingRetry", message="Retry from the UI"), force=False
        )

        def final() -> Any:
            run = client.read_flow_run(parent)
            return run if run.state is not None and run.state.is_final() else None

        retried = harness.wait_for("the retried parent", final, timeout=FAN_OUT_TIMEOUT, every=1.0)
        again = {c.parameters["shard_index"]: c for c in children_of(client, parent)}

    assert retried.state.is_completed(), retried.state
    assert retried.run_count == 2
    # The same two children: shard 0 kept as it was, shard 1 run a second time.
    assert {i: c.id for i, c in again.items()} == {i: c.id for i, c in first.items()}
    assert again[0].run_count == 1 and again[0].end_time == first[0].end_time
    assert again[1].run_count == 2 and again[1].state.is_completed()
    # Every record once: shard 0's records only by its first run, shard 1's by its rerun.
    audit = audit_by_run(deploy_api)
    assert audit == {str(first[0].id): (20, 0), str(first[1].id): (20, 0)}
    stored = dict(deploy_api.query("SELECT id, duration FROM media"))
    assert stored == pytest.approx(durations, abs=1e-6)
