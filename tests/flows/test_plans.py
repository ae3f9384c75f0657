"""Plan, then apply, and the record of every run: the real flows against a real API
(uvicorn on 127.0.0.1, a temp SQLite file) under Prefect's test server, planned through
the `backfill` CLI."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from api.schemas import (
    BackfillKind,
    HashAlgorithm,
    HashResult,
    MediaIn,
    PlanCreate,
    RunPublic,
)
from flows.client import BackfillClient
from flows.media_duration import media_duration
from flows.settings import ConfigError
from ops.cli import app
from tests.conftest import ROOT, LiveApi
from tests.flows.conftest import write_wav

#: The real flows under Prefect's test server.
e2e = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_api_url")]

KIND = BackfillKind.MEDIA_DURATION
#: The commands docs/operations.md shows, run here (`uv run backfill` is `app`).
PLAN = "uv run backfill plan media-duration --json"
APPLY = "uv run backfill run media-duration --plan PLAN_ID --batch-size 2"
RUNS = "uv run backfill runs"
OPERATIONS_COMMANDS = [PLAN, APPLY, RUNS, "uv run backfill runs --json"]


def backfill(command: str, **env: str) -> Result:
    """`command` (a `uv run backfill ...` line) through the CLI app, in this process."""
    return CliRunner().invoke(app, shlex.split(command)[3:], env=env or None)


def register_wavs(api: LiveApi, root: Path, names: list[str]) -> dict[str, int]:
    """WAVs of 1, 2, 3... thousand frames at 8 kHz, registered: uri -> id."""
    items = []
    for i, name in enumerate(names, start=1):
        write_wav(root / name, frames=1000 * i)
        items.append(MediaIn(uri=name, media_type="audio"))
    with BackfillClient(api.url, api.admin_token) as client:
        result = client.register_media(items)
    return {i.uri: i.id for i in result.items if i.id is not None}


def runs(api: LiveApi) -> list[RunPublic]:
    with BackfillClient(api.url, api.admin_token) as client:
        return client.runs(limit=100).items


@e2e[0]
@e2e[1]
def test_a_plan_applied_after_a_concurrent_edit_skips_that_record_only(
    client_env: LiveApi, media_root: Path
) -> None:
    planned = register_wavs(client_env, media_root, [f"p/{i}.wav" for i in range(6)])

    made = backfill(PLAN)

    assert made.exit_code == 0, made.output
    plan = json.loads(made.stdout)
    assert plan["count"] == 6 and plan["kind"] == "media-duration" and plan["id"]
    assert [i["record_id"] for i in plan["items"]] == sorted(planned.values())

    # After the plan: a record that is not in it, and a concurrent edit of a planned one
    # (its hash set by another backfill: revision 1 -> 2, its duration still to do).
    outside = register_wavs(client_env, media_root, ["late/0.wav"])["late/0.wav"]
    edited = planned["p/2.wav"]
    with BackfillClient(client_env.url, client_env.admin_token) as client:
        hashed = client.post_results(
            BackfillKind.FILE_HASHING,
            [HashResult(record_id=edited, hash="a" * 64, algorithm=HashAlgorithm.SHA256)],
        )
        assert hashed.applied == 1
        assert client.get_media(edited).revision == 2

    applied = backfill(APPLY.replace("PLAN_ID", plan["id"]), COLUMNS="200")

    assert applied.exit_code == 0, applied.output
    assert re.search(r"changed since plan\s*│\s*1\b", applied.stdout), applied.stdout
    assert re.search(r"applied\s*│\s*5\b", applied.stdout), applied.stdout
    with BackfillClient(client_env.url, client_env.admin_token) as client:
        durations = {m.id: m.duration for m in client.list_media().items}
        now = client.get_plan(plan["id"]).counts
    expected = {rid: (i + 1) / 8 for i, rid in enumerate(planned.values())}
    assert durations == expected | {edited: None, outside: None}
    assert now is not None and (now.todo, now.changed, now.done) == (0, 1, 5)

    # Applied again (a rerun of the same plan): everything is done or changed; nothing moves.
    again = media_duration(plan_id=plan["id"])
    assert (again.processed, again.skipped, again.changed_since_plan) == (0, 5, 1)
    assert again.plan_id == plan["id"]
    assert {"metric": "changed since plan", "value": 1} in again.table()

    first, second = sorted(
        (r for r in runs(client_env) if r.plan_id == plan["id"]), key=lambda r: r.id
    )
    assert (first.state, first.applied, first.changed_since_plan) == ("completed", 5, 1)
    assert (second.state, second.skipped, second.applied) == ("completed", 5, 0)
    assert first.parameters["plan_id"] == plan["id"] and first.parameters["batch_size"] == 2
    assert first.kind == KIND and first.compute_version == 1 and first.token_name == "admin"
    assert first.ended_at is not None and first.mode == "missing"


@e2e[0]
@e2e[1]
def test_a_plan_for_another_kind_or_compute_version_is_refused(
    client_env: LiveApi, media_root: Path
) -> None:
    register_wavs(client_env, media_root, ["a.wav"])
    with BackfillClient(client_env.url, client_env.admin_token) as client:
        hashing = client.create_plan(PlanCreate(kind=BackfillKind.FILE_HASHING))
        newer = client.create_plan(PlanCreate(kind=KIND, compute_version=2))

    with pytest.raises(ConfigError, match=f"plan {hashing.id} is for file-hashing, not media"):
        media_duration(plan_id=hashing.id)
    with pytest.raises(ConfigError, match="made for compute version 2 of media-duration"):
        media_duration(plan_id=newer.id)

    with BackfillClient(client_env.url, client_env.admin_token) as client:
        assert client.list_media().items[0].duration is None
    refused = {r.plan_id: r for r in runs(client_env)}
    assert refused[hashing.id].state == "failed"
    assert "is for file-hashing" in (refused[hashing.id].reason or "")
    assert refused[newer.id].state == "failed" and refused[newer.id].applied == 0


@e2e[0]
@e2e[1]
def test_every_run_is_recorded_with_its_parameters_and_state(
    client_env: LiveApi, media_root: Path
) -> None:
    register_wavs(client_env, media_root, ["x/0.wav", "x/1.wav"])
    (media_root / "x/bad.wav").write_bytes(b"not audio")
    with BackfillClient(client_env.url, client_env.admin_token) as client:
        client.register_media([MediaIn(uri="x/bad.wav", media_type="audio")])

    dry = media_duration(dry_run=True, max_failure_ratio=0.5)
    done = media_duration(limit=1)
    failed = backfill("uv run backfill run media-duration --max-failure-ratio 0")

    assert dry.status == "completed" and done.status == "completed" and failed.exit_code == 1
    newest = runs(client_env)
    assert [(r.state, r.dry_run, r.applied) for r in newest] == [
        ("failed", False, 1),
        ("completed", False, 1),
        ("completed", True, 2),
    ]
    assert newest[0].parameters["max_failure_ratio"] == 0 and newest[0].failed == 1
    assert "max_failure_ratio=0" in (newest[0].reason or "")
    assert newest[1].parameters["limit"] == 1 and newest[2].parameters["dry_run"] is True
    assert len({r.flow_run_id for r in newest}) == 3

    listed = backfill(f"{RUNS} --json")
    assert listed.exit_code == 0, listed.output
    assert [r["state"] for r in json.loads(listed.stdout)["items"]] == [
        "failed",
        "completed",
        "completed",
    ]
    table = backfill(RUNS, COLUMNS="200")
    assert table.exit_code == 0 and "completed (dry run)" in table.stdout


def test_operations_doc_shows_the_tested_commands() -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    sections = text.split("## Plan, then apply", 1)[-1]
    missing = [command for command in OPERATIONS_COMMANDS if command not in sections]
    assert not missing, f"docs/operations.md lacks: {missing}"


def test_a_cancel_is_recorded_with_its_reason_by_the_flows_hook(client_env: LiveApi) -> None:
    from types import SimpleNamespace
    from uuid import uuid4

    from prefect.states import Cancelled

    from api.schemas import RunStart
    from flows.media_duration import media_duration as flow
    from flows.record import ON_CANCELLATION

    run_id = uuid4()
    with BackfillClient(client_env.url, client_env.admin_token) as client:
        client.start_run(RunStart(flow_run_id=str(run_id), kind=KIND))
    assert flow.on_cancellation_hooks == ON_CANCELLATION

    ON_CANCELLATION[0](flow, SimpleNamespace(id=run_id), Cancelled(message="stopped by ops"))  # type: ignore[arg-type]

    [run] = runs(client_env)
    assert (run.state, run.reason) == ("cancelled", "stopped by ops")
    assert [(e.event, e.reason) for e in run.events] == [("cancel", "stopped by ops")]
