"""Fixtures for the deployment tests: a real `prefect server start` (with its UI), a live API
on its own SQLite file, the `backfills` pool with every deployment of prefect.yaml, and a
process worker started from the project folder: one of each per Prefect-server group
(`tests.conftest.PREFECT_SERVER_GROUPS`), started at its first use, stopped after the group's
last test, so the two groups never share a server even when one xdist worker runs both."""

from __future__ import annotations

import os
import re
import shlex
import sqlite3
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import pytest
import yaml  # type: ignore[import-untyped, unused-ignore]

from tests.conftest import (
    LAST_OF_GROUP,
    PREFECT_TEST_SERVER,
    ROOT,
    LiveApi,
    free_port,
    migrated_live_api,
    on_a_free_port,
    one_worker_group,
    prefect_env,
    prefect_server_group,
    prefect_server_timeout,
    seed_prefect_home,
    server_timeout,
    session_members,
    spawn,
    stop_group,
    wait_healthy,
)
from tests.helpers import empty_tables, file_items, register

__all__ = ["session_members", "stop_group"]  # re-exported for the tests of this folder

T = TypeVar("T")

#: Seconds a deployment run may take from `prefect deployment run` to a final state.
RUN_TIMEOUT = 120

#: How often the test server's scheduler loop runs (Prefect's default is 60 s): short, so
#: the schedule test sees the loop at work in seconds. The other loops keep their defaults.
SCHEDULER_LOOP_SECONDS = 2

#: The start of a line of the server log: "21:20:03.913 | ERROR   | logger.name - message".
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d+ \| (?P<level>\w+) +\| (?P<logger>\S+) - ")

#: Loggers of the server's loops: Prefect's services, and docket, which runs them.
LOOP_LOGGERS = ("prefect.server.services", "docket")


def wait_for(
    what: str, probe: Callable[[], T | None], timeout: float | None = None, every: float = 0.2
) -> T:
    """Call `probe` until it returns something truthy; fail the test after `timeout` s
    (default `server_timeout()`, BACKFILL_TEST_SERVER_TIMEOUT)."""
    timeout = server_timeout() if timeout is None else timeout
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


@dataclass
class PrefectServer:
    """A real `prefect server start` on 127.0.0.1 with a PREFECT_HOME of its own (its SQLite
    lock waits shortened, `tests.prefect_test_server.shorter_lock_waits`)."""

    home: Path
    #: A Prefect home its own starts from (`seed_prefect_home`; None: a new one).
    template: Path | None = None
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None
    #: Bytes of the server log already checked for loop errors (`no_server_loop_errors`).
    checked: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a Prefect CLI or worker talking to this server."""
        return (
            prefect_env(
                self.home,
                PREFECT_API_URL=self.api_url,
                PREFECT_CLI_PROMPT="false",
                PREFECT_CLI_COLORS="false",
                PREFECT_CLI_WRAP_LINES="false",
                PWD=str(ROOT),
            )
            | extra
        )

    def start(self, timeout: float | None = None) -> None:
        """Start the server and wait for `/health` (on a deadline of
        `prefect_server_timeout()` s), on another port if its own was taken meanwhile
        (`on_a_free_port`); on any failure its process group is killed."""
        on_a_free_port(lambda port: self._start(port, timeout), self.port)

    def _start(self, port: int, timeout: float | None) -> None:
        self.port = port
        self.home.mkdir(parents=True, exist_ok=True)
        if self.template is not None:  # Prefect's database: $PREFECT_HOME/prefect.db
            seed_prefect_home(self.template, self.home)
        self.log = (self.home / "server.log").open("ab")
        self.process = spawn(
            f"prefect server on port {self.port}",
            # `prefect server start`, through Prefect's CLI in a process that first shortens
            # its SQLite lock waits from a minute to seconds (tests/prefect_test_server.py).
            [sys.executable, str(PREFECT_TEST_SERVER), "prefect", "server", "start"]
            + ["--host", "127.0.0.1", "--port", str(self.port)],
            cwd=ROOT,
            env=self.env(
                PREFECT_UI_ENABLED="true",
                PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS=str(SCHEDULER_LOOP_SECONDS),
                # A run refused the deployment's slot tries again after 5 s (default 30).
                PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS="5",
                # A write refused an API-limit slot asks again within 5 s, not 30: the server's
                # Retry-After grows with the waiters and the slots' average hold, both larger
                # on a loaded machine (one test's 8 serialised writes took 130 s at -n 4).
                PREFECT_SERVER_CONCURRENCY_MAXIMUM_CONCURRENCY_SLOT_WAIT_SECONDS="5",
            ),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

        try:
            wait_healthy(
                self.process,
                self.api_url,
                prefect_server_timeout() if timeout is None else timeout,
                self.log_path,
                health="/health",
                what=f"prefect server on port {self.port}",
            )
        except BaseException:
            self.stop()
            raise

    @property
    def log_path(self) -> Path:
        return self.home / "server.log"

    def errors(self, since: int = 0) -> list[tuple[str, str]]:
        """(logger, text) of every ERROR or CRITICAL entry of the server log from byte `since`
        on, with its traceback; a traceback outside such an entry has logger "?"."""
        with self.log_path.open("rb") as log:
            log.seek(since)
            text = log.read().decode(errors="replace")
        found: list[tuple[str, list[str]]] = []
        current: list[str] | None = None
        for line in text.splitlines():
            match = LOG_LINE.match(line)
            if match:
                current = None
                if match["level"] in ("ERROR", "CRITICAL"):
                    current = [line]
                    found.append((match["logger"], current))
            elif current is not None:
                current.append(line)
            elif line.startswith("Traceback (most recent call last)"):
                current = [line]
                found.append(("?", current))
        # The head and the last lines (the exception itself) of each entry.
        return [
            (logger, "\n".join(lines if len(lines) <= 45 else lines[:40] + ["..."] + lines[-4:]))
            for logger, lines in found
        ]

    def service_errors(self, since: int = 0) -> list[str]:
        """What a loop of the server (scheduler, late runs, repossessor, ...) logged when it
        raised, from byte `since` of the server log on; also any stray traceback.

        Not a lock refusal ("database is locked"): under load, a write of Prefect's server
        meets its own SQLite lock now and then, and with a wait of 5 s, not a minute
        (tests/prefect_test_server.py), it fails instead of stalling the server. The loop or
        the work it does runs again (the task-run recorder retries its events; the next poll
        of a worker marks its queues ready again). A broken loop raises on every pass."""
        return [
            text
            for logger, text in self.errors(since)
            if (logger == "?" or logger.startswith(LOOP_LOGGERS))
            and "database is locked" not in text
        ]

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process)
            self.process = None
        if self.log is not None:
            self.log.close()
            self.log = None

    def cli(
        self, command: str, *, check: bool = True, timeout: float = RUN_TIMEOUT, **env: str
    ) -> subprocess.CompletedProcess[str]:
        """Run a shell command line (as written in docs/operations.md) against this server."""
        done = subprocess.run(
            shlex.split(command),
            cwd=ROOT,
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            pytest.fail(f"{command} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done

    @contextmanager
    def client(self) -> Iterator[Any]:
        """A synchronous Prefect client of this server (what the UI calls)."""
        from prefect.client.orchestration import SyncPrefectClient

        with SyncPrefectClient(api=self.api_url) as client:
            yield client


class PerGroup:
    """What the tests of one Prefect-server group share, made at its first use (by a context
    manager, given a folder of its own) and kept until the group's last test is done; a failure
    to make it is kept too, so the next test of the group fails at once instead of waiting out the
    deadline again."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self.tmp_path_factory = tmp_path_factory
        self.made: dict[tuple[str, str], Any] = {}
        self.exits: dict[str, ExitStack] = {}
        #: Groups whose last test is done (`LAST_OF_GROUP`).
        self.stopped: set[str] = set()

    def get(
        self,
        request: pytest.FixtureRequest,
        what: str,
        make: Callable[[Path], AbstractContextManager[T]],
    ) -> T:
        """`what` of the group of the requesting test module."""
        group = prefect_server_group(request.module.__name__)
        if group in self.stopped:  # the order of the tests changed after the collection
            pytest.fail(f"group {group} was stopped after {LAST_OF_GROUP[group]}, its last test")
        key = (group, what)
        if key not in self.made:
            try:
                folder = self.tmp_path_factory.mktemp(f"{group}-{what}")
                exits = self.exits.setdefault(group, ExitStack())
                self.made[key] = exits.enter_context(make(folder))
            except (Exception, pytest.fail.Exception) as exc:
                self.made[key] = exc
                raise
        value = self.made[key]
        if isinstance(value, Exception | pytest.fail.Exception):
            pytest.fail(f"{what} of group {group} could not be started: {value!r}")
        return value  # type: ignore[no-any-return]

    def stop(self, group: str) -> None:
        """Stop what `group` shares, in the reverse order: worker, API, then the server."""
        self.stopped.add(group)
        self.exits.pop(group, ExitStack()).close()


#: The session's `PerGroup`, for `pytest_runtest_teardown`.
SHARED: list[PerGroup] = []


@pytest.fixture(scope="session")
def per_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PerGroup]:
    shared = PerGroup(tmp_path_factory)
    SHARED.append(shared)
    try:
        yield shared
    finally:
        SHARED.remove(shared)
        for group in list(shared.exits):
            shared.stop(group)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    """Stop a group's Prefect server, API and worker after its last test (even when that
    test's teardown fails), not at the end of the session: idle, they still cost CPU (the
    server's loops poll its database) while the other tests run."""
    try:
        return (yield)
    finally:
        group = one_worker_group(item)
        if SHARED and group is not None and LAST_OF_GROUP.get(group) == item.nodeid:
            SHARED[0].stop(group)


@contextmanager
def started_prefect_server(home: Path, template: Path) -> Iterator[PrefectServer]:
    server = PrefectServer(home=home, template=template)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def prefect_server(
    per_group: PerGroup, request: pytest.FixtureRequest, prefect_home_template: Path
) -> PrefectServer:
    return per_group.get(
        request, "prefect-home", lambda home: started_prefect_server(home, prefect_home_template)
    )


@pytest.fixture(autouse=True)
def no_server_loop_errors(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test during which the Prefect server logged a traceback or an ERROR: what a
    broken loop (the scheduler under SQLAlchemy 2.1, say) logs while every API call works."""
    if "prefect_server" not in request.fixturenames:
        yield
        return
    server: PrefectServer = request.getfixturevalue("prefect_server")
    yield
    size = server.log_size()
    # A lock refusal ("database is locked", see `service_errors`) is a warning, not a
    # broken loop.
    errors = server.service_errors(since=server.checked)
    others = [text for logger, text in server.errors(since=server.checked) if text not in errors]
    server.checked = size
    for text in others:  # e.g. "database is locked" persisting a worker heartbeat, under load
        warnings.warn(f"the Prefect server logged an error:\n{text}", stacklevel=1)
    if errors:
        pytest.fail(
            f"the Prefect server logged {len(errors)} error(s) ({server.log_path}):\n"
            + "\n---\n".join(errors[:3])
        )


@dataclass
class DeployApi:
    """The live API the worker's flow runs write to, and the media root they read."""

    api: LiveApi
    media_root: Path

    def reset(self) -> None:
        """Empty every table but the tokens (the worker holds one) and the seeded tiers."""
        empty_tables(self.api.database_url, keep_tokens=True)

    @property
    def db_path(self) -> str:
        return self.api.database_url.removeprefix("sqlite:///")

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.db_path) as conn:
            return conn.execute(sql, args).fetchall()

    def register_files(self, folder: str, sizes: list[int]) -> dict[str, Path]:
        """Write files of random bytes under the media root and register them as audio."""
        paths = {}
        for i, size in enumerate(sizes):
            path = self.media_root / folder / f"{i:04d}.bin"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(os.urandom(size))
            paths[path.relative_to(self.media_root).as_posix()] = path
        register(self.api, file_items(self.media_root, paths.values()))
        return paths

    def hashes(self) -> dict[str, str | None]:
        return dict(self.query("SELECT uri, sha256 FROM media"))


@contextmanager
def started_deploy_api(folder: Path) -> Iterator[DeployApi]:
    api = migrated_live_api(folder, "api.db", admin="worker")
    media_root = folder / "media"
    media_root.mkdir()
    api.start()
    try:
        yield DeployApi(api=api, media_root=media_root)
    finally:
        api.stop()


@pytest.fixture(scope="module")
def deploy_api(per_group: PerGroup, request: pytest.FixtureRequest) -> DeployApi:
    return per_group.get(request, "deploy-api", started_deploy_api)


def deployable(
    folder: Path, prefect_yaml: Path = ROOT / "prefect.yaml"
) -> tuple[list[str], Path | None]:
    """Names (flow/deployment) of the entries whose flow file exists; a filtered copy of
    prefect.yaml in `folder` when some do not (None when every entry can be deployed)."""
    from deployments.definitions import load_definitions

    specs = load_definitions(prefect_yaml)
    present = [spec for spec in specs if spec.flow_file.is_file()]
    names = [f"{spec.load_flow().name}/{spec.name}" for spec in present]
    if len(present) == len(specs):
        return names, None
    raw = yaml.safe_load(prefect_yaml.read_text())
    kept = {spec.entrypoint for spec in present}
    raw["deployments"] = [d for d in raw["deployments"] if d["entrypoint"] in kept]
    copy = folder / "test-prefect.yaml"
    copy.write_text(yaml.safe_dump(raw, sort_keys=False))
    return names, copy


@dataclass
class Deployed:
    """What `prefect deploy --all` created, read back right after it ran."""

    names: list[str]
    deployments: dict[str, Any]  # full name -> DeploymentResponse


def deploy_all(prefect_server: PrefectServer) -> list[str]:
    """`uv run prefect deploy --all` (of the deployable part of prefect.yaml); the names."""
    names, filtered = deployable(prefect_server.home)
    command = "uv run prefect deploy --all"
    if filtered is not None:  # some flow modules have not landed yet: deploy the others
        command += f" --prefect-file {filtered}"
    done = prefect_server.cli(command, check=False)
    if done.returncode != 0:
        hint = ""
        output = done.stdout + done.stderr
        if "workers/filter" in output and "422" in output:
            # Prefect 3.8.8's client sends `"limit": null`; FastAPI >= 0.151 answers 422.
            hint = "\nFastAPI >= 0.151 breaks Prefect's server here: pin fastapi<0.151.\n"
        pytest.fail(f"{command} exited {done.returncode}:{hint}\n{done.stdout}\n{done.stderr}")
    return names


@pytest.fixture(scope="module")
def deployed(
    per_group: PerGroup, request: pytest.FixtureRequest, prefect_server: PrefectServer
) -> Deployed:
    return per_group.get(request, "deployed", lambda _: nullcontext(deploy_pool(prefect_server)))


def deploy_pool(prefect_server: PrefectServer) -> Deployed:
    """The documented commands: create the pool, deploy everything, then pause schedules."""
    prefect_server.cli("uv run prefect work-pool create backfills --type process")
    names = deploy_all(prefect_server)
    with prefect_server.client() as client:
        snapshot = {name: client.read_deployment_by_name(name) for name in names}
    # No nightly run may fire while the tests run (a test at 01:00 UTC would see one).
    prefect_server.cli("uv run prefect deployment schedule pause --all")
    return Deployed(names=names, deployments=snapshot)


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def running_worker(
    prefect_server: PrefectServer,
    deploy_api: DeployApi,
    log_path: Path,
    *,
    name: str | None = None,
    query_seconds: int = 1,
) -> Iterator[Worker]:
    """`prefect worker start --pool backfills` (as `name`) from the project folder, BACKFILL_*
    set, until it is online (on the deadline of `prefect_server_timeout()`); stopped after."""
    env = prefect_server.env(
        BACKFILL_API_URL=deploy_api.api.url,
        BACKFILL_API_TOKEN=deploy_api.api.admin_token,
        BACKFILL_MEDIA_ROOT=str(deploy_api.media_root),
        # Fail fast once the API is gone (the retry test takes it down on purpose).
        BACKFILL_MAX_RETRIES="2",
        PREFECT_WORKER_QUERY_SECONDS=str(query_seconds),
        PREFECT_WORKER_PREFETCH_SECONDS="5",
    )
    command = "uv run prefect worker start --pool backfills" + (f" --name {name}" if name else "")
    with log_path.open("ab") as log:
        process = spawn(
            name or "prefect worker",
            shlex.split(command),
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    worker = Worker(process=process, log_path=log_path)

    def online() -> bool:
        if process.poll() is not None:
            pytest.fail(f"the worker {name or ''} exited:\n{worker.log()}")
        with prefect_server.client() as client:
            return any(
                w.status == "ONLINE" and (name is None or w.name == name)
                for w in client.read_workers_for_work_pool("backfills")
            )

    try:
        wait_for(f"the worker {name or ''} to come online", online, prefect_server_timeout(), 0.5)
        yield worker
    finally:
        stop_group(process)


@pytest.fixture(scope="module")
def worker(
    per_group: PerGroup,
    request: pytest.FixtureRequest,
    prefect_server: PrefectServer,
    deployed: Deployed,
    deploy_api: DeployApi,
) -> Worker:
    """`prefect worker start --pool backfills` from the project folder, BACKFILL_* set."""
    return per_group.get(
        request,
        "worker",
        lambda folder: running_worker(prefect_server, deploy_api, folder / "worker.log"),
    )


def flow_run_id(output: str) -> str:
    """The flow run id `prefect deployment run` prints ("UUID: ...")."""
    for line in output.splitlines():
        if "UUID:" in line:
            return line.split("UUID:", 1)[1].strip()
    pytest.fail(f"no flow run id in:\n{output}")
