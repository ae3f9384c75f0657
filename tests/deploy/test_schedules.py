"""The Prefect server's loops the nightly backfills rely on, on a real `prefect server start`:

- the scheduler creates the scheduled flow runs of every nightly deployment after
  `prefect deploy --all` (under SQLAlchemy 2.1 it raised every minute and created none,
  while every API call worked: only a run of the loop shows it);
- a run not started on time is marked Late (what the UI shows of a nightly run no worker took);
- a deployment's concurrency slot (limit 1) is released when its run ends, so the run that
  waited for it starts.

`no_server_loop_errors` (conftest) fails any of these, and every other test on the server,
when the server logs a traceback.
"""

from __future__ import annotations

import datetime as dt
import time
from functools import partial
from typing import Any

import pytest

from deployments.definitions import load_definitions
from tests.conftest import server_timeout
from tests.deploy.conftest import (
    RUN_TIMEOUT,
    DeployApi,
    Deployed,
    PrefectServer,
    Worker,
    deploy_all,
    wait_for,
)

pytestmark = pytest.mark.e2e

#: Runs Prefect's scheduler keeps ahead for a schedule (PREFECT_SERVER_SERVICES_SCHEDULER_MIN_RUNS;
#: nightly runs are less than a day apart of nothing, so the minimum is what it creates).
MIN_RUNS = 3

#: Records of the paced run that holds a deployment's slot (one a second: at least this many
#: seconds), longer than a flow-run process takes to start at a load average of 8.
PACED_RECORDS = 20


def scheduled_runs(client: Any, deployment_id: Any) -> list[Any]:
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    return list(
        client.read_flow_runs(
            deployment_filter=DeploymentFilter(id={"any_": [deployment_id]}),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
            ),
            limit=200,
        )
    )


def next_daily(cron: str, after: dt.datetime, count: int) -> list[dt.datetime]:
    """The next `count` times of a daily cron ("M H * * *", UTC) after `after`."""
    minute, hour, *rest = cron.split()
    assert rest == ["*", "*", "*"], cron
    first = after.replace(hour=int(hour), minute=int(minute), second=0, microsecond=0)
    if first <= after:
        first += dt.timedelta(days=1)
    return [first + dt.timedelta(days=i) for i in range(count)]


def test_deploy_all_leads_to_scheduled_runs_of_every_nightly_deployment(
    prefect_server: PrefectServer, deployed: Deployed
) -> None:
    specs = {spec.entrypoint: spec for spec in load_definitions() if spec.schedules}
    since = prefect_server.log_size()
    deployed_at = dt.datetime.now(dt.UTC)
    names = deploy_all(prefect_server)  # the schedules of prefect.yaml are active again
    assert names == deployed.names
    names = [name for name in names if name.endswith("/nightly")]  # `adhoc` has no schedule
    started = time.monotonic()
    try:
        with prefect_server.client() as client:
            deployments = {name: client.read_deployment_by_name(name) for name in names}

            def every_deployment_scheduled() -> dict[str, list[Any]] | None:
                runs = {name: scheduled_runs(client, d.id) for name, d in deployments.items()}
                print({name: len(r) for name, r in runs.items()})
                errors = prefect_server.service_errors(since)
                if errors:  # no point waiting for a loop that raises
                    pytest.fail("a Prefect server loop raised:\n" + errors[0])
                return runs if all(len(r) >= MIN_RUNS for r in runs.values()) else None

            runs = wait_for(
                "scheduled runs of every nightly deployment",
                every_deployment_scheduled,
                timeout=server_timeout(),
                every=0.5,
            )
            seconds = time.monotonic() - started
            print(f"every deployment scheduled {seconds:.1f} s after `prefect deploy --all`")
            for name, deployment in deployments.items():
                spec = specs[deployment.entrypoint]
                (schedule,) = deployment.schedules
                assert schedule.active
                ahead = sorted(runs[name], key=lambda r: r.expected_start_time)
                # The next nightly times of its own cron, exactly MIN_RUNS of them...
                assert [r.expected_start_time for r in ahead] == next_daily(
                    spec.schedules[0].cron, deployed_at, len(ahead)
                ), name
                assert len(ahead) == MIN_RUNS, name
                for run in ahead:
                    # ...created by the scheduler loop for this schedule (not by hand, not
                    # by the deploy call), in state Scheduled, with the nightly parameters.
                    assert run.auto_scheduled, name
                    assert run.created_by is not None and run.created_by.type == "SCHEDULE"
                    assert run.created_by.id == schedule.id
                    assert run.state is not None and run.state.name == "Scheduled"
                    assert run.parameters == spec.parameters
                    assert run.work_pool_name == "backfills"
                    assert run.created >= deployed_at - dt.timedelta(seconds=5)
            # Within a minute of the deploy (the recent-deployments loop runs every 5 s).
            assert seconds < 60
    finally:
        # No nightly run may fire while the other tests run.
        prefect_server.cli("uv run prefect deployment schedule pause --all")
    with prefect_server.client() as client:
        # Pausing deletes the runs scheduled ahead: nothing is left to fire.
        assert all(scheduled_runs(client, d.id) == [] for d in deployments.values())


def test_a_run_not_started_on_time_is_marked_late(
    prefect_server: PrefectServer, deployed: Deployed
) -> None:
    from prefect.states import Scheduled

    due = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=2)
    with prefect_server.client() as client:
        # A paused queue of the pool: no worker takes the run, it can only become Late.
        client.create_work_queue(name="late-check", work_pool_name="backfills", is_paused=True)
        deployment = client.read_deployment_by_name("file-hashing/nightly")
        run = client.create_flow_run_from_deployment(
            deployment.id,
            parameters={"dry_run": True},
            state=Scheduled(scheduled_time=due),
            work_queue_name="late-check",
        )
        try:
            assert run.state is not None and run.state.name == "Scheduled"

            def late() -> Any:
                state = client.read_flow_run(run.id).state
                return state if state is not None and state.name == "Late" else None

            # The late-runs loop: every 5 s, for runs more than 15 s past due (defaults).
            state = wait_for("the run to be marked Late", late, timeout=server_timeout())
            assert state.type.value == "SCHEDULED"
            assert state.state_details.scheduled_time == due
        finally:
            client.delete_flow_run(run.id)


def test_the_next_run_of_a_deployment_starts_once_the_slot_is_released(
    prefect_server: PrefectServer, worker: Worker, deploy_api: DeployApi
) -> None:
    deploy_api.reset()
    deploy_api.register_files("slot", [64 + i for i in range(PACED_RECORDS)])
    with prefect_server.client() as client:
        deployment = client.read_deployment_by_name("file-hashing/nightly")

        def state_of(run_id: Any) -> Any:
            return client.read_flow_run(run_id).state

        # The first run holds the deployment's slot (limit 1) for at least PACED_RECORDS s:
        # it is paced at one record a second. Only once it runs is the second one created
        # (a hand-triggered run during the nightly one), so the second finds the slot taken
        # however long its process takes to start: a dry run that, started at once, could
        # otherwise finish before the first one even asked for the slot.
        first = client.create_flow_run_from_deployment(
            deployment.id,
            parameters={"batch_size": 1, "concurrency": 1, "max_records_per_second": 1},
        ).id

        def running_or_over() -> Any:
            state = state_of(first)
            return state if state.is_running() or state.is_final() else None

        started = wait_for("the first run to start", running_or_over, 2 * RUN_TIMEOUT)
        assert started.is_running(), f"the first run ended before it was seen running: {started}"
        second = client.create_flow_run_from_deployment(
            deployment.id, parameters={"dry_run": True}
        ).id

        def finished(run_id: Any) -> Any:
            run = client.read_flow_run(run_id)
            return run if run.state is not None and run.state.is_final() else None

        done = [
            wait_for("both runs", partial(finished, r), 2 * RUN_TIMEOUT, 0.5)
            for r in (first, second)
        ]
        assert [run.state.name for run in done] == ["Completed", "Completed"]
        histories = [[s.name for s in client.read_flow_run_states(r)] for r in (first, second)]
        # The second waited for the slot and started only after the first had ended: the
        # slot was held, then released, and the waiting run took it.
        assert "AwaitingConcurrencySlot" not in histories[0], histories
        assert "AwaitingConcurrencySlot" in histories[1], histories
        assert done[1].start_time >= done[0].end_time
        # Nothing holds the deployment's slot once both are done.
        limit = client.read_deployment_by_name("file-hashing/nightly").global_concurrency_limit
        assert limit is not None and limit.limit == 1 and limit.active_slots == 0
    assert None not in deploy_api.hashes().values()
