"""`python -m deployments.serve`: the deployments of prefect.yaml served from one process,
without a work pool, and a run of one of them triggered from the shell.

It registers the same names as `prefect deploy --all`, so it first deletes those (the
documented switch from a work pool to serve) and runs after the work-pool tests of its group
("prefect-server-2", which has a Prefect server of its own; pytest runs the modules of this
folder in name order)."""

from __future__ import annotations

import shlex
import signal
import subprocess

import pytest

from deployments.definitions import ROOT, load_definitions
from tests.conftest import prefect_server_timeout, spawn
from tests.deploy.conftest import (
    DeployApi,
    PrefectServer,
    session_members,
    stop_group,
    wait_for,
)

pytestmark = pytest.mark.e2e


def test_serve_registers_every_deployment_and_runs_them(
    prefect_server: PrefectServer, deploy_api: DeployApi
) -> None:
    deploy_api.reset()
    files = deploy_api.register_files("served", [10, 20, 30])
    specs = [spec for spec in load_definitions() if spec.flow_file.is_file()]
    # Serving over work-pool deployments would update them in place and leave their pool
    # set (a worker could still take their runs): switch cleanly.
    prefect_server.cli("uv run prefect deployment delete --all")
    env = prefect_server.env(
        BACKFILL_API_URL=deploy_api.api.url,
        BACKFILL_API_TOKEN=deploy_api.api.admin_token,
        BACKFILL_MEDIA_ROOT=str(deploy_api.media_root),
        PREFECT_RUNNER_POLL_FREQUENCY="1",
    )
    serve = spawn(
        "deployments.serve",
        shlex.split("uv run python -m deployments.serve"),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        names = [f"{spec.load_flow().name}/{spec.name}" for spec in specs]

        def served() -> list[object] | None:
            if serve.poll() is not None:
                output = serve.stdout.read().decode(errors="replace") if serve.stdout else ""
                pytest.fail(f"serve exited:\n{output}")
            from prefect.exceptions import ObjectNotFound

            with prefect_server.client() as client:
                try:
                    found = [client.read_deployment_by_name(name) for name in names]
                except ObjectNotFound:
                    return None
            return found if all(d.work_pool_name is None for d in found) else None

        # Once a second: a look is one API call per deployment, which at the default 0.2 s
        # kept the server busy while serve, on the same cores, was starting.
        deployments = wait_for(
            "serve to register its deployments", served, timeout=prefect_server_timeout(), every=1
        )
        for spec, deployment in zip(specs, deployments, strict=True):
            assert deployment.entrypoint == spec.entrypoint  # type: ignore[attr-defined]
            assert deployment.parameters == spec.parameters  # type: ignore[attr-defined]
            crons = [s.schedule.cron for s in deployment.schedules]  # type: ignore[attr-defined]
            assert crons == [s.cron for s in spec.schedules]
            limit = deployment.global_concurrency_limit  # type: ignore[attr-defined]
            assert limit.limit == spec.concurrency_limit.limit

        prefect_server.cli("uv run prefect deployment run 'file-hashing/nightly' --watch")
        assert all(deploy_api.hashes()[uri] for uri in files)
    finally:
        if serve.poll() is None:
            serve.send_signal(signal.SIGINT)  # what Ctrl-C does: Prefect pauses the schedules
            try:
                serve.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        stop_group(serve)
    assert session_members(serve.pid) == []
