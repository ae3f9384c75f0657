"""The Prefect side of the budgets: the work queues' priorities and the per-kind API limits.

    uv run python -m deployments.budgets                  # after `prefect work-pool create`
    uv run python -m deployments.budgets --api-limit 8    # new limits get 8 slots

Idempotent, run it again whenever you like:

- the pool's work queues `nightly` (priority 1) and `adhoc` (priority 10) are created, or
  their priority set: a worker takes the runs of a lower number first, so nightly runs go
  before an operator's ad-hoc ones (`prefect.yaml` puts each deployment on one of them);
- a Prefect global concurrency limit `backfill-api-<kind>` is created for every kind that
  has none (`--api-limit` slots, default 8): every run of that kind holds one slot around
  each chunk's API writes (flows.budgets). An existing limit keeps its value: change it with
  `prefect gcl update backfill-api-<kind> --limit N`; `prefect gcl inspect` shows who holds
  its slots.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from api.schemas import BackfillKind
from deployments.definitions import PREFECT_YAML, DefinitionError, load_definitions
from flows.budgets import api_limit_name

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient

#: The work queues of the pool and their priority (a lower number is taken first).
QUEUES = {"nightly": 1, "adhoc": 10}
#: Slots of a new `backfill-api-<kind>` limit: API writes of one kind at once, all runs.
DEFAULT_API_LIMIT = 8

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
console = Console()
errors = Console(stderr=True)


def check_queues() -> None:
    """Every deployment of prefect.yaml is on one of `QUEUES` (a queue nobody set the
    priority of would sit among them by chance)."""
    for spec in load_definitions():
        queue = spec.work_pool.work_queue_name
        if queue not in QUEUES:
            raise DefinitionError(
                f"{PREFECT_YAML}: {spec.entrypoint} ({spec.name}) is on work queue {queue!r}, "
                f"not one of {', '.join(QUEUES)} (deployments/budgets.py)"
            )


def set_queues(client: SyncPrefectClient, pool: str) -> dict[str, int]:
    """Create or re-prioritise the queues; the priorities as the server has them then."""
    from prefect.exceptions import ObjectNotFound

    for name, priority in sorted(QUEUES.items(), key=lambda item: item[1]):
        try:
            queue = client.read_work_queue_by_name(name, work_pool_name=pool)
        except ObjectNotFound:
            client.create_work_queue(name=name, work_pool_name=pool, priority=priority)
        else:
            if queue.priority != priority:
                # The work pool's route: it moves the other queues' priorities out of the
                # way (`update_work_queue`'s legacy route would leave two queues at 1).
                client.request(
                    "PATCH",
                    "/work_pools/{work_pool_name}/queues/{name}",
                    path_params={"work_pool_name": pool, "name": name},
                    json={"priority": priority},
                ).raise_for_status()
    return {q.name: q.priority for q in client.read_work_queues(work_pool_name=pool)}


def set_api_limits(client: SyncPrefectClient, slots: int) -> dict[str, tuple[int, bool]]:
    """Create the missing `backfill-api-<kind>` limits; name -> (limit, created now)."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectNotFound

    found = {}
    for kind in BackfillKind:
        name = api_limit_name(kind)
        try:
            limit = client.read_global_concurrency_limit_by_name(name)
            found[name] = (limit.limit, False)
        except ObjectNotFound:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=name, limit=slots, active=True)
            )
            found[name] = (slots, True)
    return found


@app.command()
def main(
    pool: Annotated[str, typer.Option(help="The work pool of prefect.yaml.")] = "backfills",
    api_limit: Annotated[
        int, typer.Option(min=1, help="Slots of each new backfill-api-<kind> limit.")
    ] = DEFAULT_API_LIMIT,
) -> None:
    """Set the work queues' priorities and create the per-kind API concurrency limits."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        check_queues()
    except DefinitionError as exc:
        errors.print(f"error: {exc}", markup=False, soft_wrap=True)
        raise typer.Exit(2) from None
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            errors.print(
                f"error: no work pool {pool!r}: create it first with "
                f"`uv run prefect work-pool create {pool} --type process`",
                markup=False,
                soft_wrap=True,
            )
            raise typer.Exit(2) from None
        priorities = set_queues(client, pool)
        limits = set_api_limits(client, api_limit)
    table = Table(title=f"budgets on work pool {pool}")
    for column in ("what", "name", "value"):
        table.add_column(column)
    for name, priority in sorted(priorities.items(), key=lambda item: item[1]):
        table.add_row("work queue", name, f"priority {priority}")
    for name, (slots, created) in limits.items():
        table.add_row("API limit", name, f"{slots} slots" + (" (created)" if created else ""))
    console.print(table)


if __name__ == "__main__":
    app(prog_name="python -m deployments.budgets")
