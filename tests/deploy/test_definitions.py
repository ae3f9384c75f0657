"""prefect.yaml and `deployments.serve` describe the same deployments, and those are what
the issue asks for: five `nightly` deployments on the `backfills` pool, staggered at night
in UTC, one run at a time, and five `adhoc` twins for operators on the lower-priority `adhoc`
queue. Fast: no server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from api.schemas import BackfillKind
from deployments.definitions import (
    PREFECT_YAML,
    ROOT,
    DefinitionError,
    DeploymentSpec,
    load_definitions,
)
from deployments.serve import app as serve_app

ENTRYPOINTS = {
    BackfillKind.VERSION_0: "flows/version_migration.py:version_migration",
    BackfillKind.MEDIA_DURATION: "flows/media_duration.py:media_duration",
    BackfillKind.FILE_HASHING: "flows/file_hashing.py:file_hashing",
    BackfillKind.SNR_FREQUENCY: "flows/snr_frequency.py:snr_frequency",
    BackfillKind.CLIP_COMPILE: "flows/clip_compile.py:clip_compile",
}


def present(specs: list[DeploymentSpec]) -> list[DeploymentSpec]:
    return [spec for spec in specs if spec.flow_file.is_file()]


def test_prefect_yaml_has_one_nightly_deployment_per_flow() -> None:
    specs = [spec for spec in load_definitions() if spec.name == "nightly"]

    assert sorted(spec.entrypoint for spec in specs) == sorted(ENTRYPOINTS.values())
    for spec in specs:
        assert spec.work_pool.name == "backfills"
        assert spec.work_pool.work_queue_name == "nightly"
        assert spec.concurrency_limit.limit == 1
        assert spec.concurrency_limit.collision_strategy == "ENQUEUE"
        assert spec.tags == ("corpus-backfills", "nightly")
        assert spec.description
        assert spec.parameters["dry_run"] is False
        assert spec.parameters["shards"] == 1  # raise it to fan nightly runs out (fanout)
        (schedule,) = spec.schedules
        assert schedule.timezone == "UTC" and schedule.active
        _, hour, *every_day = schedule.cron.split()
        assert every_day == ["*", "*", "*"] and 0 <= int(hour) <= 5, schedule.cron

    def start(spec: DeploymentSpec) -> tuple[int, int]:
        minute, hour = spec.schedules[0].cron.split()[:2]
        return int(hour), int(minute)

    order = sorted(specs, key=start)
    assert len({start(spec) for spec in specs}) == len(specs), "staggered"
    assert order[0].entrypoint == ENTRYPOINTS[BackfillKind.VERSION_0]
    assert order[-1].entrypoint == ENTRYPOINTS[BackfillKind.CLIP_COMPILE]


def test_every_deployment_has_the_worker_start_the_engine_directly() -> None:
    # No supervisor process first (docs/operations.md, "The deployments").
    for spec in load_definitions():
        assert spec.work_pool.job_variables == {"command": "python -m prefect.engine"}, spec


def test_each_flow_has_an_adhoc_deployment_on_the_adhoc_queue() -> None:
    specs = load_definitions()
    nightly = {spec.entrypoint: spec for spec in specs if spec.name == "nightly"}
    adhoc = [spec for spec in specs if spec.name == "adhoc"]

    assert sorted(spec.entrypoint for spec in adhoc) == sorted(ENTRYPOINTS.values())
    assert {spec.name for spec in specs} == {"nightly", "adhoc"}
    for spec in adhoc:
        assert spec.work_pool.name == "backfills"
        assert spec.work_pool.work_queue_name == "adhoc"
        assert spec.schedules == ()  # an operator starts them
        assert spec.tags == ("corpus-backfills", "adhoc")
        # Its own one-at-a-time limit: an ad-hoc run never holds a nightly run's slot.
        assert spec.concurrency_limit.limit == 1
        assert spec.concurrency_limit.collision_strategy == "ENQUEUE"
        assert spec.parameters == nightly[spec.entrypoint].parameters
        assert spec.description.endswith("when an operator runs it.")


@pytest.mark.parametrize("kind", list(ENTRYPOINTS), ids=lambda k: k.value)
def test_each_entry_names_its_flow_with_valid_parameters(kind: BackfillKind) -> None:
    spec = next(s for s in load_definitions() if s.entrypoint == ENTRYPOINTS[kind])
    if not spec.flow_file.is_file():
        pytest.skip(f"{spec.flow_file.name} has not landed yet")
    flow = spec.load_flow()

    assert flow.name == kind.value
    flow.validate_parameters(dict(spec.parameters))  # raises on an unknown or bad value
    # The UI form: a description for every parameter.
    schema = flow.parameters.model_dump()
    assert all(p.get("description") for p in schema["properties"].values()), kind


def _prefect_deploy_view() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """prefect.yaml as `prefect deploy` reads it (Prefect's own loader and schedule builder)."""
    from prefect.cli.deploy._config import _load_deploy_configs_and_actions

    return _load_deploy_configs_and_actions(PREFECT_YAML, console=Console(quiet=True))


def test_serve_builds_what_prefect_deploy_builds() -> None:
    from prefect.cli.deploy._schedules import _schedule_config_to_deployment_schedule

    configs, actions = _prefect_deploy_view()
    specs = {(spec.entrypoint, spec.name): spec for spec in present(load_definitions())}
    assert specs, "no flow module present"
    for config in configs:
        if (config["entrypoint"], config["name"]) not in specs:
            continue
        served = specs[config["entrypoint"], config["name"]].to_deployment()
        assert served.name == config["name"]
        assert served.entrypoint == config["entrypoint"]
        assert served.description == config["description"]
        assert served.tags == config["tags"]
        assert served.parameters == config["parameters"]
        deployed = [_schedule_config_to_deployment_schedule(s) for s in config["schedules"]]
        assert [(s.schedule, s.active) for s in served.schedules or []] == [
            (s["schedule"], s.get("active", True)) for s in deployed
        ]
        assert served.concurrency_limit == config["concurrency_limit"]["limit"]
        assert served.concurrency_options is not None
        assert (
            served.concurrency_options.collision_strategy.value
            == config["concurrency_limit"]["collision_strategy"]
        )
        assert served.enforce_parameter_schema
    assert actions["pull"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $PWD }}"}}
    ]


def test_serve_builds_a_shards_twin_beside_each_deployment() -> None:
    for spec in present(load_definitions()):
        twin = spec.to_shards_deployment()
        assert twin.name == f"{spec.name}-shards"
        assert twin.entrypoint == spec.entrypoint
        assert twin.parameters == spec.parameters
        # The shard runs of a fanned-out run: never scheduled, never behind the parent's
        # one-at-a-time limit (which the parent holds while it waits for them).
        assert not twin.schedules
        assert twin.concurrency_limit is None
        assert twin.tags == ["corpus-backfills", *(["adhoc"] if spec.name == "adhoc" else [])] + [
            "shards"
        ]
        assert twin.enforce_parameter_schema


def test_every_deployment_key_is_understood(tmp_path: Path) -> None:
    text = PREFECT_YAML.read_text()
    unknown = tmp_path / "prefect.yaml"
    unknown.write_text(
        text.replace(
            "    entrypoint: flows/file_hashing.py",
            "    paused: true\n    entrypoint: flows/file_hashing.py",
            1,
        )
    )
    with pytest.raises(DefinitionError, match="paused: Extra inputs are not permitted"):
        load_definitions(unknown)

    no_timezone = tmp_path / "no-tz.yaml"
    no_timezone.write_text(text.replace("    timezone: UTC\n", "", 1))
    with pytest.raises(DefinitionError, match="timezone: Field required"):
        load_definitions(no_timezone)


def test_serve_check_lists_every_deployment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(serve_app, ["--check", "--skip-missing"], env={"COLUMNS": "200"})

    assert result.exit_code == 0, result.output
    for spec in present(load_definitions()):
        assert f"{spec.load_flow().name}/{spec.name}" in result.stdout
        assert all(schedule.cron in result.stdout for schedule in spec.schedules)


def test_serve_refuses_a_missing_flow_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = tmp_path / "prefect.yaml"
    broken.write_text(PREFECT_YAML.read_text().replace("flows/file_hashing.py", "flows/nope.py"))
    monkeypatch.chdir(ROOT)

    result = CliRunner().invoke(serve_app, ["--check", "--prefect-file", str(broken)])

    assert result.exit_code == 2
    assert "flows/nope.py:file_hashing" in result.stderr and "does not exist" in result.stderr
