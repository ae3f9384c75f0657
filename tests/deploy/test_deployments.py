"""The operator's path, for real: `prefect server start`, the `backfills` process pool,
`prefect deploy --all`, a worker started from the project folder, runs triggered from the
shell with `--watch`, and a failed run retried the way the UI's Retry button does it.

The command lines are the ones docs/operations.md shows; the last test checks they are there.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest

from deployments.definitions import ROOT, load_definitions
from tests.deploy import conftest as harness

DRY_RUN = "uv run prefect deployment run 'file-hashing/nightly' --param limit=100 --param dry_run=true --watch"
RUN = "uv run prefect deployment run 'file-hashing/nightly' --param max_failure_ratio=0.5 --watch"
ONLY_FAILED = "uv run prefect deployment run 'file-hashing/nightly' --param mode=failed --watch"
SLOW_RUN = "uv run prefect deployment run 'file-hashing/nightly' --param batch_size=1 --param concurrency=1 --watch"

#: Every command these tests run, as docs/operations.md must show it.
OPERATIONS_COMMANDS = [
    "uv run prefect server start",
    "uv run prefect work-pool create backfills --type process",
    "uv run prefect deploy --all",
    "uv run prefect deployment schedule pause --all",
    "uv run prefect worker start --pool backfills",
    DRY_RUN,
    ONLY_FAILED,
    "uv run prefect deployment delete --all",
    "uv run python -m deployments.serve",
]

pytestmark = pytest.mark.e2e


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_deploy_all_creates_the_nightly_deployments(deployed: harness.Deployed) -> None:
    specs = {(spec.entrypoint, spec.name): spec for spec in load_definitions()}
    present = [spec for spec in specs.values() if spec.flow_file.is_file()]
    assert len(deployed.deployments) == len(present) >= 4

    for name, deployment in deployed.deployments.items():
        spec = specs[deployment.entrypoint, deployment.name]
        assert name == f"{spec.load_flow().name}/{spec.name}"
        assert deployment.work_pool_name == "backfills"
        # Nightly runs on the `nightly` queue, operators' on `adhoc` (docs, "Budgets").
        assert deployment.work_queue_name == spec.name
        assert deployment.job_variables == {"command": "python -m prefect.engine"}
        if spec.name == "adhoc":
            assert deployment.schedules == []
            assert deployment.tags == ["corpus-backfills", "adhoc"]
            assert deployment.global_concurrency_limit.limit == 1
            continue
        schedules = [(s.schedule.cron, s.schedule.timezone, s.active) for s in deployment.schedules]
        assert schedules == [(s.cron, "UTC", True) for s in spec.schedules]
        assert deployment.parameters == spec.parameters
        assert deployment.tags == ["corpus-backfills", "nightly"]
        assert deployment.description == spec.description
        assert deployment.global_concurrency_limit.limit == 1
        assert deployment.concurrency_options.collision_strategy.value == "ENQUEUE"
        # `{{ $PWD }}` was filled in by `prefect deploy`, run from the project folder.
        assert deployment.pull_steps == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}
        ]
        # The UI's run form: every parameter typed, described, and enforced.
        assert deployment.enforce_parameter_schema
        properties = deployment.parameter_openapi_schema["properties"]
        for parameter in ("batch_size", "limit", "dry_run", "mode", "shard_count"):
            assert properties[parameter]["description"], (name, parameter)
        assert properties["dry_run"]["type"] == "boolean"
        assert properties["batch_size"]["type"] == "integer"
    crons = sorted(s.schedule.cron for d in deployed.deployments.values() for s in d.schedules)
    assert len(set(crons)) == len(crons), "nightly runs are staggered"


def test_runs_from_the_shell_dry_run_then_real_then_mode_failed(
    prefect_server: harness.PrefectServer, worker: harness.Worker, deploy_api: harness.DeployApi
) -> None:
    deploy_api.reset()
    files = deploy_api.register_files("shell", [10, 2000, 1 << 16, 3, 40_000])

    dry = prefect_server.cli(DRY_RUN)
    assert "Flow run finished successfully in 'Completed'" in dry.stdout
    assert "'limit': 100" in dry.stdout and "'dry_run': True" in dry.stdout
    assert set(deploy_api.hashes().values()) == {None}

    missing = deploy_api.media_root / "shell" / "0004.bin"
    kept = missing.read_bytes()
    missing.unlink()  # a file that is gone: one failure in the ledger, the run goes on
    prefect_server.cli(RUN)
    hashes = deploy_api.hashes()
    assert {uri: hashes[uri] for uri in files if uri != "shell/0004.bin"} == {
        uri: sha256(path) for uri, path in files.items() if uri != "shell/0004.bin"
    }
    ((attempts, error),) = deploy_api.query(
        "SELECT attempts, last_error FROM backfill_failures WHERE kind = 'file-hashing'"
    )
    assert attempts == 1 and "shell/0004.bin" in error

    missing.write_bytes(kept)
    prefect_server.cli(ONLY_FAILED)
    assert deploy_api.hashes()["shell/0004.bin"] == sha256(missing)
    assert deploy_api.query("SELECT count(*) FROM backfill_failures") == [(0,)]


def test_watch_exits_non_zero_when_the_run_fails_and_the_ui_retry_continues(
    prefect_server: harness.PrefectServer, worker: harness.Worker, deploy_api: harness.DeployApi
) -> None:
    deploy_api.reset()
    # One record per chunk, so the API goes down mid-run: the run needs 55 more chunk tasks
    # (several seconds even on a quiet machine) after the test sees 5, while stopping the API
    # takes under one. (150 made the retry alone run 145 tasks, a minute on a busy machine.)
    total = 60
    deploy_api.register_files("retry", [100 + i for i in range(total)])

    def applied_batches() -> int:
        ((count,),) = deploy_api.query(
            "SELECT count(*) FROM audit WHERE kind = 'file-hashing' AND applied > 0"
        )
        return int(count)

    watch = subprocess.Popen(
        shlex.split(SLOW_RUN),
        cwd=ROOT,
        env=prefect_server.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # One record per chunk, one chunk at a time: take the API down a few chunks in.
        harness.wait_for("the first chunks", lambda: applied_batches() >= 5, timeout=90, every=0.02)
        deploy_api.api.stop()
        output, _ = watch.communicate(timeout=harness.RUN_TIMEOUT)
    finally:
        if watch.poll() is None:
            watch.kill()
        if deploy_api.api.process is None:
            deploy_api.api.start()

    assert watch.returncode == 1, output
    assert "Flow run finished in state 'Failed'" in output
    run_id = harness.flow_run_id(output)
    first = deploy_api.query(
        "SELECT count(*), coalesce(max(id), 0) FROM audit WHERE kind = 'file-hashing'"
    )[0]
    done_before = {uri for uri, digest in deploy_api.hashes().items() if digest is not None}
    assert 5 <= len(done_before) < total

    # What the UI's Retry button sends: `set_state` to Scheduled "AwaitingRetry" (the
    # default UI with force=false, so the server's orchestration rules must allow it; the
    # V2 UI forces it).
    from prefect.states import Scheduled

    with prefect_server.client() as client:
        client.set_flow_run_state(
            run_id, Scheduled(name="AwaitingRetry", message="Retry from the UI"), force=False
        )

        def final_state() -> Any:
            state = client.read_flow_run(run_id).state
            return state if state is not None and state.is_final() else None

        state = harness.wait_for(
            "the retried run", final_state, timeout=harness.RUN_TIMEOUT, every=0.5
        )
        assert state.is_completed(), state
        run = client.read_flow_run(run_id)
        assert run.run_count == 2
        from prefect.client.schemas.filters import FlowRunFilter

        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id={"any_": [run.id]}), limit=200
        )
        task_names = [t.name for t in task_runs]

    # Every record hashed exactly once across both attempts...
    hashes = deploy_api.hashes()
    assert None not in hashes.values()
    rows = deploy_api.query(
        "SELECT id, applied, unchanged, flow_run_id FROM audit "
        "WHERE kind = 'file-hashing' AND NOT dry_run"
    )
    assert sum(applied for _, applied, _, _ in rows) == total
    assert sum(unchanged for _, _, unchanged, _ in rows) == 0
    assert {run for _, _, _, run in rows} == {run_id}
    # ...and the retry computed only what the first attempt had not finished.
    _, last_id_before = first
    after = [row for row in rows if row[0] > last_id_before]
    assert sum(applied for _, applied, _, _ in after) == total - len(done_before)
    ids_before = {
        int(record_id)
        for (record_id,) in deploy_api.query(
            "SELECT id FROM media WHERE uri IN ({})".format(",".join("?" * len(done_before))),
            *sorted(done_before),
        )
    }
    chunk_ids: list[int] = []
    for name in task_names:
        match = re.fullmatch(r"file-hashing-(\d+)-(\d+)", name)
        if match:
            chunk_ids += range(int(match[1]), int(match[2]) + 1)
    # Attempt 1 ran chunks for ids_before (and maybe the one in flight); attempt 2 ran the
    # rest: each finished record appears in exactly one chunk task run.
    for record_id in ids_before:
        assert chunk_ids.count(record_id) == 1, record_id


def test_operations_doc_shows_the_tested_commands() -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    missing = [command for command in OPERATIONS_COMMANDS if command not in text]
    assert not missing, f"docs/operations.md lacks: {missing}"
