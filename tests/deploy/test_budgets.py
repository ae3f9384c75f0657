"""Budgets on a real `prefect server start`: the work queues' priorities and the per-kind API
concurrency limits that `python -m deployments.budgets` sets up, the order in which the
server hands scheduled runs to a worker (nightly before ad-hoc), and a limit of one slot
serialising the API writes of two runs at once (seen by a recording proxy in front of the
live API). The commands are the ones docs/operations.md shows ("Budgets")."""

from __future__ import annotations

import datetime as dt
import shlex
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from api.schemas import BackfillKind
from deployments.budgets import DEFAULT_API_LIMIT, QUEUES
from deployments.definitions import ROOT
from flows.budgets import api_limit_name
from tests.conftest import spawn, stop_group
from tests.deploy import conftest as harness

BUDGETS = "uv run python -m deployments.budgets"
ADHOC_RUN = (
    "uv run prefect deployment run 'file-hashing/adhoc' --param max_records_per_second=50 --watch"
)
GCL_CREATE = "uv run prefect gcl create backfill-api-file-hashing --limit 1"

#: Every command these tests run, as docs/operations.md must show it.
OPERATIONS_COMMANDS = [BUDGETS, GCL_CREATE, ADHOC_RUN]

pytestmark = pytest.mark.e2e


def delete_api_limits(prefect_server: harness.PrefectServer) -> None:
    """No API limit is left for the other tests of the session."""
    from prefect.exceptions import ObjectNotFound

    with prefect_server.client() as client:
        for kind in BackfillKind:
            try:
                client.delete_global_concurrency_limit_by_name(api_limit_name(kind))
            except ObjectNotFound:
                pass


def test_budgets_sets_queue_priorities_and_creates_the_api_limits(
    prefect_server: harness.PrefectServer, deployed: harness.Deployed
) -> None:
    try:
        first = prefect_server.cli(BUDGETS)
        again = prefect_server.cli(BUDGETS + " --api-limit 9")  # idempotent; keeps limits
        with prefect_server.client() as client:
            queues = {q.name: q for q in client.read_work_queues(work_pool_name="backfills")}
            limits = {
                kind: client.read_global_concurrency_limit_by_name(api_limit_name(kind))
                for kind in BackfillKind
            }
            deployments = {name: client.read_deployment_by_name(name) for name in deployed.names}
    finally:
        delete_api_limits(prefect_server)

    assert queues["nightly"].priority == QUEUES["nightly"] == 1
    assert queues["adhoc"].priority == QUEUES["adhoc"] == 10
    # `default` (priority 1 when the pool was made) moved behind `nightly`, ahead of `adhoc`.
    assert 1 < queues["default"].priority < 10
    for limit in limits.values():
        assert (limit.limit, limit.active, limit.active_slots) == (DEFAULT_API_LIMIT, True, 0)
    assert first.stdout.count("(created)") == len(BackfillKind)
    assert "(created)" not in again.stdout and "9 slots" not in again.stdout
    assert "priority 10" in again.stdout
    # Every deployment is on the queue named after it: nightly ones first.
    assert {name: d.work_queue_name for name, d in deployments.items()} == {
        name: name.split("/")[1] for name in deployed.names
    }
    assert {d.split("/")[1] for d in deployed.names} == {"nightly", "adhoc"}

    missing = prefect_server.cli(BUDGETS + " --pool nope", check=False)
    assert missing.returncode == 2
    assert "no work pool 'nope'" in missing.stderr and "Traceback" not in missing.stderr


def test_a_worker_is_handed_nightly_runs_before_adhoc_ones(
    prefect_server: harness.PrefectServer, deployed: harness.Deployed
) -> None:
    """What the server answers a worker's poll (`get_scheduled_flow_runs` of its pool): the
    runs of `nightly` first, even when an ad-hoc run has waited longer; with a pool limited
    to one run at a time, only the nightly one. A pool of its own, so no worker takes them."""
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.states import Scheduled

    pool = "budgets-priority"
    now = dt.datetime.now(dt.UTC)
    with prefect_server.client() as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        try:
            prefect_server.cli(f"{BUDGETS} --pool {pool}")
            template = client.read_deployment_by_name("file-hashing/nightly")
            deployment_id = client.create_deployment(
                flow_id=template.flow_id,
                name="priority-check",
                work_pool_name=pool,
                work_queue_name="nightly",
                entrypoint=template.entrypoint,
                parameter_openapi_schema=template.parameter_openapi_schema,
            )
            adhoc = client.create_flow_run_from_deployment(
                deployment_id,
                parameters={"dry_run": True},
                state=Scheduled(scheduled_time=now - dt.timedelta(seconds=60)),
                work_queue_name="adhoc",
            )
            nightly = client.create_flow_run_from_deployment(
                deployment_id,
                parameters={"dry_run": True},
                state=Scheduled(scheduled_time=now - dt.timedelta(seconds=30)),
                work_queue_name="nightly",
            )

            def handed() -> list[Any]:
                runs = client.get_scheduled_flow_runs_for_work_pool(pool, scheduled_before=now)
                return [r.flow_run.id for r in runs]

            assert handed() == [nightly.id, adhoc.id]  # the ad-hoc run is older
            client.update_work_pool(pool, WorkPoolUpdate(concurrency_limit=1))
            assert handed() == [nightly.id]
        finally:
            delete_api_limits(prefect_server)
            client.delete_work_pool(pool)


def test_an_adhoc_run_goes_through_the_adhoc_queue_at_its_pace(
    prefect_server: harness.PrefectServer, worker: harness.Worker, deploy_api: harness.DeployApi
) -> None:
    deploy_api.reset()
    deploy_api.register_files("adhoc", [64 + i for i in range(100)])

    started = time.monotonic()
    done = prefect_server.cli(ADHOC_RUN)
    seconds = time.monotonic() - started

    assert "Flow run finished successfully in 'Completed'" in done.stdout
    assert None not in deploy_api.hashes().values()
    with prefect_server.client() as client:
        run = client.read_flow_run(harness.flow_run_id(done.stdout))
    assert run.work_queue_name == "adhoc"
    assert run.parameters["max_records_per_second"] == 50
    assert (run.end_time - run.start_time).total_seconds() >= 100 / 50 * 0.97  # 100 at 50/s
    assert seconds >= 2


# --- The API limit, seen from the API's side -----------------------------------------------


class Recorder:
    """A reverse proxy in front of the live API that records when each batch POST of
    file-hashing starts and ends (and holds each one `delay` s, so overlaps cannot hide)."""

    def __init__(self, upstream: str, delay: float) -> None:
        self.upstream, self.delay = upstream, delay
        self.posts: list[tuple[float, float]] = []
        self.lock = threading.Lock()
        self.in_flight = 0
        self.most_in_flight = 0

    def handler(self) -> type[BaseHTTPRequestHandler]:
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                batch = self.command == "POST" and self.path.endswith("/backfills/file-hashing")
                start = time.monotonic()
                if batch:
                    with recorder.lock:
                        recorder.in_flight += 1
                        recorder.most_in_flight = max(recorder.most_in_flight, recorder.in_flight)
                    time.sleep(recorder.delay)
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("host", "content-length", "connection")
                }
                try:
                    answer = httpx.request(
                        self.command,
                        recorder.upstream + self.path,
                        content=body,
                        headers=headers,
                        timeout=60,
                    )
                finally:
                    if batch:
                        with recorder.lock:
                            recorder.in_flight -= 1
                            recorder.posts.append((start, time.monotonic()))
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in (
                        "content-length",
                        "content-encoding",
                        "transfer-encoding",
                        "connection",
                    ):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = do_PUT = forward

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@contextmanager
def recording_proxy(upstream: str, delay: float) -> Iterator[tuple[str, Recorder]]:
    recorder = Recorder(upstream, delay)
    server = ThreadingHTTPServer(("127.0.0.1", 0), recorder.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", recorder
    finally:
        server.shutdown()
        server.server_close()


def test_an_api_limit_of_one_serialises_the_writes_of_two_runs(
    prefect_server: harness.PrefectServer, deployed: harness.Deployed, deploy_api: harness.DeployApi
) -> None:
    deploy_api.reset()
    deploy_api.register_files("limited", [100 + i for i in range(40)])
    prefect_server.cli(GCL_CREATE)
    try:
        with recording_proxy(deploy_api.api.url, delay=0.3) as (proxy, recorder):
            env = prefect_server.env(
                BACKFILL_API_URL=proxy,
                BACKFILL_API_TOKEN=deploy_api.api.admin_token,
                BACKFILL_MEDIA_ROOT=str(deploy_api.media_root),
            )
            # Two runs at once (two halves of the work), two chunks in flight each. (Prefect's
            # waiters poll: with many of them on one slot the server's Retry-After grows to
            # 30 s, and the test would measure that rather than the limit.)
            runs = [
                spawn(
                    f"backfill run shard {index}",
                    shlex.split(
                        "uv run backfill run file-hashing --batch-size 5 --concurrency 2 "
                        f"--shard-count 2 --shard-index {index} --verbose"
                    ),
                    cwd=ROOT,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
                for index in range(2)
            ]
            try:
                outputs = [run.communicate(timeout=2 * harness.RUN_TIMEOUT)[0] for run in runs]
            finally:
                for run in runs:
                    stop_group(run)
            with prefect_server.client() as client:
                limit = client.read_global_concurrency_limit_by_name(
                    api_limit_name(BackfillKind.FILE_HASHING)
                )
            serialised = sorted(recorder.posts), recorder.most_in_flight
            # The control: without the limit, one such run alone overlaps its writes.
            delete_api_limits(prefect_server)
            # Each write held 2 s: the run's three chunks start within that of each other
            # even when Prefect is slow to start task runs on a loaded machine.
            recorder.posts, recorder.most_in_flight, recorder.delay = [], 0, 2.0
            deploy_api.register_files("unlimited", [100 + i for i in range(15)])
            control = prefect_server.cli(
                "uv run backfill run file-hashing --batch-size 5 --concurrency 3 --verbose",
                BACKFILL_API_URL=proxy,
                BACKFILL_API_TOKEN=deploy_api.api.admin_token,
                BACKFILL_MEDIA_ROOT=str(deploy_api.media_root),
            )
    finally:
        delete_api_limits(prefect_server)

    for run, output in zip(runs, outputs, strict=True):
        assert run.returncode == 0, output
        assert "API writes hold a slot of backfill-api-file-hashing (limit 1)" in output
    assert None not in deploy_api.hashes().values()
    # 40 records in chunks of 5: eight batch POSTs, one at a time, never overlapping.
    posts, most_in_flight = serialised
    assert len(posts) == 8
    assert most_in_flight == 1
    assert all(later[0] >= earlier[1] for earlier, later in zip(posts, posts[1:], strict=False))
    assert limit.active_slots == 0  # every slot released
    print(f"8 posts of two runs, serialised over {posts[-1][1] - posts[0][0]:.2f} s")
    assert "no concurrency limit backfill-api-file-hashing" in control.stdout + control.stderr
    assert len(recorder.posts) == 3, control.stdout
    assert recorder.most_in_flight >= 2, sorted(recorder.posts)
    print(f"without the limit: {recorder.most_in_flight} writes at once")


def test_operations_doc_shows_the_budget_commands() -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    budgets = text[text.index("## Budgets") :]
    missing = [command for command in OPERATIONS_COMMANDS if command not in budgets]
    assert not missing, f"docs/operations.md, Budgets, lacks: {missing}"
