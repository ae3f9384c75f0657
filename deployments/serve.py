"""Serve every deployment of `prefect.yaml` from this one process, without a work pool.

    uv run python -m deployments.serve            # from the project folder, BACKFILL_* set
    uv run python -m deployments.serve --check    # list what would be served, and exit

The deployments are built from `prefect.yaml` itself (see `deployments.definitions`):
same names, entrypoints, schedules, parameters, tags, descriptions and concurrency limits
as `prefect deploy --all`, only no work pool; and beside each, its `-shards` twin for the
shard runs of a run with `shards` > 1 (`flows.fanout`). Each run executes in a subprocess of
this one; stop it with Ctrl-C (Prefect then pauses the schedules it served).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from deployments.definitions import (
    PREFECT_YAML,
    ROOT,
    DefinitionError,
    DeploymentSpec,
    load_definitions,
)

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
console = Console()
errors = Console(stderr=True)


def _fail(message: str) -> typer.Exit:
    errors.print(f"[red]error:[/red] {message}", markup=True, highlight=False, soft_wrap=True)
    return typer.Exit(2)


def select(specs: list[DeploymentSpec], *, skip_missing: bool) -> list[DeploymentSpec]:
    """The entries to serve; an entry whose flow file is absent is an error, or skipped."""
    chosen = []
    for spec in specs:
        if spec.flow_file.is_file():
            chosen.append(spec)
        elif skip_missing:
            errors.print(f"[yellow]skipping {spec.entrypoint}: no such file[/yellow]", markup=True)
        else:
            raise DefinitionError(
                f"{spec.entrypoint}: {spec.flow_file} does not exist "
                "(--skip-missing serves the others)"
            )
    return chosen


def _table(specs: list[DeploymentSpec], flow_names: list[str]) -> Table:
    table = Table(title="deployments from prefect.yaml")
    for column in ("deployment", "entrypoint", "schedule (tz)", "concurrency", "parameters"):
        table.add_column(column)
    for spec, flow_name in zip(specs, flow_names, strict=True):
        schedules = ", ".join(f"{s.cron} ({s.timezone})" for s in spec.schedules)
        limit = spec.concurrency_limit
        parameters = " ".join(f"{k}={v}" for k, v in spec.parameters.items())
        table.add_row(
            f"{flow_name}/{spec.name}",
            spec.entrypoint,
            schedules or "-",
            f"{limit.limit} ({limit.collision_strategy})",
            parameters,
        )
    return table


@app.command()
def main(
    prefect_file: Annotated[
        Path, typer.Option(help="The project file to read.", dir_okay=False)
    ] = PREFECT_YAML,
    check: Annotated[bool, typer.Option(help="List the deployments and exit.")] = False,
    skip_missing: Annotated[
        bool, typer.Option(help="Skip entries whose flow file does not exist yet.")
    ] = False,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Most flow runs at once (default: no limit).")
    ] = None,
) -> None:
    """Serve every deployment of prefect.yaml from this process (no work pool)."""
    if Path.cwd().resolve() != ROOT:
        # Entrypoints, `.env` and relative BACKFILL_* paths resolve against the current
        # folder in every flow run, exactly as for a worker started from the project folder.
        raise _fail(f"run this from the project folder {ROOT}")
    try:
        specs = select(load_definitions(prefect_file), skip_missing=skip_missing)
        flows = [spec.load_flow() for spec in specs]
        if check:
            console.print(_table(specs, [flow.name for flow in flows]))
            return
        deployments = [spec.to_deployment() for spec in specs]
        deployments += [spec.to_shards_deployment() for spec in specs]  # for `shards`
    except DefinitionError as exc:
        raise _fail(str(exc)) from None
    # Before Prefect's runner starts: it has nobody to send telemetry to.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect import serve

    serve(*deployments, limit=limit)


if __name__ == "__main__":
    app(prog_name="python -m deployments.serve")
