"""`backfill demo`: the whole product on the embedded default, end to end, in one command.

1. a temporary Prefect server starts in the background (PREFECT_HOME = <workdir>/prefect;
   10-25 s on a small machine, most of it Prefect's own migrations the first time) while
2. the sample corpus is written to <workdir>/media (`ops.corpus`, ground truth included),
3. the API starts on a free loopback port over a fresh SQLite file (<workdir>/api.db),
   an admin token is created, and the media (legacy files as schema_version 0) and the
   clip projects are registered through it;
4. every registered backfill flow runs here, in order (version-0 first), with progress;
5. a coverage table, the failures with their reasons, and where the results are.

Everything it started is stopped at the end; `--keep` leaves the API up for exploring.
Heavy imports (Prefect, sqlalchemy for the server-side setup, numpy) happen inside
`run_demo`, so importing this module is cheap and loads no database driver.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import httpx
import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from api.cli import uvicorn_command
from api.schemas import BackfillKind, PendingFilter, ReprocessMode
from flows.client import APIError
from flows.settings import ConfigError, prefect_startup_timeout
from ops.running import progress_bar, quiet_prefect_console, quiet_prefect_env, run_with_progress

if TYPE_CHECKING:
    from flows.client import BackfillClient
    from flows.engine import BackfillReport
    from ops.corpus import Manifest

console = Console()
errors = Console(stderr=True)

#: The order runs go in: legacy records are upgraded first, so the field kinds see them;
#: clip-compile last, so its inputs have their durations.
DEMO_ORDER = (
    BackfillKind.VERSION_0,
    BackfillKind.MEDIA_DURATION,
    BackfillKind.FILE_HASHING,
    BackfillKind.SNR_FREQUENCY,
    BackfillKind.CLIP_COMPILE,
)
#: The sample corpus is about 10% deliberately corrupt files: a run should not fail on them.
DEMO_MAX_FAILURE_RATIO = 0.5
#: Seconds to wait for the API to answer its health check (Prefect's server: the setting
#: PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, 120 s by default; see
#: flows.settings.prefect_startup_timeout).
API_START_TIMEOUT = 60.0
DEFAULT_WORKDIR = Path("var/demo")

T = TypeVar("T")


class DemoError(Exception):
    """The demo cannot go on; the message says why."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.TransportError:
        return False


class Layout:
    """Where the demo keeps things under its working folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.media = root / "media"
        self.compiled = self.media / "compiled"
        self.database = root / "api.db"
        self.prefect_home = root / "prefect"
        self.logs = root / "logs"
        self.api_pid = root / "api.pid"

    def fresh_start(self) -> None:
        """A new API database and no compiled videos; the corpus and Prefect's history stay
        (the corpus is rewritten only where its bytes differ)."""
        _stop_kept_api(self.api_pid)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.database}{suffix}").unlink(missing_ok=True)
        shutil.rmtree(self.compiled, ignore_errors=True)
        self.logs.mkdir(parents=True, exist_ok=True)


def _stop_kept_api(pid_file: Path) -> None:
    """Stop the API a previous `demo --keep` left running, if it is still that process."""
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        pid_file.unlink(missing_ok=True)
        return
    if b"api.main:app" in cmdline:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                os.kill(pid, 0)
                time.sleep(0.1)
    pid_file.unlink(missing_ok=True)


#: How many ports a demo server tries before it gives up (`Server.wait_healthy`).
PORT_ATTEMPTS = 5


@dataclass
class Server:
    """A child server process on 127.0.0.1 with its log in a file."""

    name: str
    #: Its command line, serving on the port given.
    command: Callable[[int], list[str]]
    env: dict[str, str]
    health_path: str
    log_path: Path
    cwd: Path
    detach: bool = False
    port: int = field(default_factory=_free_port)
    process: subprocess.Popen[bytes] | None = None
    started: float = field(default_factory=time.perf_counter)
    #: Where in `log_path` the output of the current process begins.
    log_from: int = 0
    ports_tried: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.started = time.perf_counter()
        self._spawn()

    def _spawn(self) -> None:
        self.ports_tried += 1
        with self.log_path.open("ab") as log:
            self.log_from = log.tell()
            self.process = subprocess.Popen(
                self.command(self.port),
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # A kept API must outlive this process and its terminal.
                start_new_session=self.detach,
            )

    def _port_taken(self) -> bool:
        """Whether the process exited because its port was taken after `_free_port` chose it
        (uvicorn: "[Errno 98] ... address already in use")."""
        with self.log_path.open("rb") as log:
            log.seek(self.log_from)
            return b"already in use" in log.read()

    def wait_healthy(self, timeout: float) -> float:
        """Block until the health check answers 200; the seconds since `start`. A server
        whose port another process took meanwhile starts again on another."""
        deadline = time.monotonic() + timeout
        while not _healthy(self.url + self.health_path):
            if self.process is None or self.process.poll() is not None:
                retry = self.process is not None and self.ports_tried < PORT_ATTEMPTS
                if not (retry and self._port_taken()):
                    raise DemoError(f"the {self.name} exited at start-up; see {self.log_path}")
                self.port = _free_port()
                self._spawn()
            if time.monotonic() > deadline:
                raise DemoError(
                    f"the {self.name} did not start in {timeout:.0f}s; see {self.log_path}"
                )
            time.sleep(0.1)
        return time.perf_counter() - self.started

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


def _prefect_server(layout: Layout) -> Server:
    """Prefect's own temporary server, as its ephemeral mode starts it (uvicorn on the app
    factory, no UI), but started by us, early, so its start-up overlaps ours."""
    import prefect  # noqa: PLC0415 - the package only, not the server (that is the child's)

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {
        "PREFECT_HOME": str(layout.prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
    }
    app_dir = str(Path(prefect.__file__).parent.parent)

    def command(port: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "--app-dir",
            app_dir,
            "--factory",
            "prefect.server.api.server:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "error",
            "--lifespan",
            "on",
        ]

    layout.prefect_home.mkdir(parents=True, exist_ok=True)
    log = layout.logs / "prefect-server.log"
    return Server("Prefect server", command, env, "/api/health", log, cwd=layout.root)


def _api_server(layout: Layout, database_url: str, *, detach: bool) -> Server:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKFILL_")}
    env["BACKFILL_DATABASE_URL"] = database_url
    log = layout.logs / "api.log"
    return Server(
        "API",
        lambda port: uvicorn_command(port, "--no-access-log"),
        env,
        "/api/v1/health",
        log,
        layout.root,
        detach,
    )


def _timed(label: str, work: Callable[[], T], detail: Callable[[T], str]) -> T:
    started = time.perf_counter()
    with errors.status(f"{label} ..."):
        value = work()
    seconds = time.perf_counter() - started
    console.print(f"  [bold]{label:<16}[/bold] {detail(value)}  [dim]{seconds:.1f}s[/dim]")
    return value


# --- Registration --------------------------------------------------------------------------


def _register(client: BackfillClient, manifest: Manifest, media_root: Path) -> dict[str, int]:
    """Register every file (legacy ones as schema_version 0) and every project."""
    items = [entry.media_in(media_root) for entry in manifest.files]
    result = client.register_media(items)
    media_ids: dict[str, int] = {}
    for entry, registered in zip(manifest.files, result.items, strict=True):
        if registered.id is None:
            raise DemoError(f"the API refused {entry.uri}: {registered.reason}")
        media_ids[entry.uri] = registered.id
    for project in manifest.projects:
        client.create_project(project.project_create(media_ids))
    return media_ids


# --- Running the flows ---------------------------------------------------------------------


@dataclass
class KindRun:
    kind: BackfillKind
    report: BackfillReport | None = None
    error: str | None = None
    seconds: float = 0.0


def _run_kind(kind: BackfillKind, bar: Progress) -> KindRun:
    """Run one registered flow in this process; a failed run is reported, not raised."""
    from flows.engine import BackfillFailed

    started = time.perf_counter()
    run = KindRun(kind)
    state = run_with_progress(kind, {"max_failure_ratio": DEMO_MAX_FAILURE_RATIO}, bar)
    run.seconds = time.perf_counter() - started
    if state.is_completed():
        run.report = state.result()
    else:
        outcome = state.result(raise_on_failure=False)
        if isinstance(outcome, BackfillFailed):
            run.report = outcome.report
            run.error = outcome.report.reason
        else:
            run.error = " ".join(str(outcome).split()) or state.message or state.type.value
    return run


def _run_flows(kinds: list[BackfillKind], prefect_api_url: str, home: Path) -> list[KindRun]:
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    runs: list[KindRun] = []
    with (
        temporary_settings(
            updates={
                PREFECT_API_URL: prefect_api_url,
                PREFECT_HOME: home,
                # In-process runs need no crash-detection heartbeats (each costs ~1 s).
                "flows.heartbeat_frequency": None,
            }
        ),
        quiet_prefect_console(),
        progress_bar(console) as bar,
    ):
        for kind in kinds:
            runs.append(_run_kind(kind, bar))
        drain_prefect_workers()
    for run in runs:
        r = run.report
        counts = (
            f"{r.processed} processed: {r.applied} applied, {r.unchanged} unchanged, "
            f"{r.rejected} rejected, {r.failed} failed"
            if r
            else "no report"
        )
        status = "[green]completed[/green]" if run.error is None else "[red]failed[/red]"
        console.print(f"  {run.kind.value:<16} {status}  {counts}  [dim]{run.seconds:.1f}s[/dim]")
        if run.error:
            console.print(f"  {'':<16} [red]{run.error}[/red]", soft_wrap=True)
    return runs


def drain_prefect_workers() -> None:
    """Send the runs' last logs and events before the server stops (as Prefect's test
    harness does), so nothing is left retrying against a stopped server at exit."""
    import inspect

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:
        with contextlib.suppress(RuntimeError):  # never started
            logs = APILogWorker.instance().drain()
            if inspect.isawaitable(logs):
                await logs
        events = EventsWorker.drain_all()
        if inspect.isawaitable(events):
            await events

    run_coro_as_sync(drain())


# --- The summary ---------------------------------------------------------------------------


@dataclass
class Failure:
    kind: BackfillKind
    record_id: int
    uri: str | None
    attempts: int
    reason: str


def _failures(
    api_url: str, token: str, client: BackfillClient, kind: BackfillKind, manifest: Manifest
) -> list[Failure]:
    """The failure ledger of `kind`: from `GET /backfills/{kind}/failures` when the API has
    it, else `/pending?mode=failed` (ids, uris, attempts) with the corpus's own note on
    why each corrupt file is corrupt."""
    response = httpx.get(
        f"{api_url}/api/v1/backfills/{kind.value}/failures",
        params={"limit": 1000},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30.0,
    )
    if response.status_code == 200:
        return [
            Failure(kind, i["record_id"], i.get("uri"), i["attempts"], i["last_error"])
            for i in response.json()["items"]
        ]
    expected = {f.uri: f.expected_error for f in manifest.files if f.corrupt}
    page = client.pending(kind, where=PendingFilter(mode=ReprocessMode.FAILED), limit=1000)
    return [
        Failure(
            kind,
            item.record_id,
            item.uri,
            item.attempts,
            f"(ledger reason not served by this API) corpus says: "
            f"{expected.get(item.uri or '', 'not a deliberately corrupt file')}",
        )
        for item in page.items
    ]


def _coverage_table(client: BackfillClient, api_url: str) -> tuple[Table, list[BackfillKind]]:
    coverage = client.coverage()
    table = Table(title=f"coverage at {api_url}")
    for name in ("kind", "total", "done", "pending", "failed", "quarantined", "done %"):
        table.add_column(name, justify="left" if name == "kind" else "right")
    with_failures = []
    for k in coverage.kinds:
        share = f"{100 * k.done / k.total:.1f}" if k.total else "-"
        values = (k.total, k.done, k.pending, k.failed, k.quarantined)
        table.add_row(k.kind.value, *(str(v) for v in values), share)
        if k.failed:
            with_failures.append(k.kind)
    return table, with_failures


def _failure_table(failures: list[Failure]) -> Table:
    table = Table(title="failures, from the failure ledger", show_lines=False)
    for name in ("kind", "record", "uri", "attempts", "reason"):
        table.add_column(name, overflow="fold")
    for f in failures:
        table.add_row(f.kind.value, str(f.record_id), f.uri or "-", str(f.attempts), f.reason)
    return table


# --- The demo ------------------------------------------------------------------------------


def run_demo(*, keep: bool, workdir: Path) -> int:
    """Run the demo in `workdir`; the exit code (0: every run completed)."""
    started = time.perf_counter()
    layout = Layout(workdir.resolve())
    console.print(f"[bold]corpus-backfills demo[/bold] in {layout.root}")
    # Before Prefect is imported: no telemetry, and its console lines would tear the bars.
    quiet_prefect_env()
    try:
        prefect_startup_timeout()  # a bad value: say so before anything starts
    except ConfigError as exc:
        errors.print(f"[red]error:[/red] {exc}", markup=True, highlight=False, soft_wrap=True)
        return 2
    try:
        with ExitStack() as stack:
            return _demo(layout, stack, keep=keep, started=started)
    except (DemoError, APIError) as exc:
        errors.print(f"[red]error:[/red] {exc}", markup=True, highlight=False, soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        errors.print("[red]interrupted[/red]: everything the demo started is stopped")
        return 130


def _demo(layout: Layout, stack: ExitStack, *, keep: bool, started: float) -> int:
    from api.core.db import engine_for
    from api.migrate import upgrade
    from api.services.tokens import create_token
    from flows.client import BackfillClient
    from flows.registry import FLOWS
    from ops.corpus import make_sample_corpus

    layout.root.mkdir(parents=True, exist_ok=True)
    layout.fresh_start()

    prefect = _prefect_server(layout)
    prefect.start()
    stack.callback(prefect.stop)

    manifest = _timed(
        "sample corpus",
        lambda: make_sample_corpus(layout.media),
        lambda m: (
            f"{len(m.files)} files ({sum(f.legacy for f in m.files)} legacy, "
            f"{sum(f.corrupt for f in m.files)} corrupt), {len(m.projects)} projects "
            f"in {layout.media}"
        ),
    )

    database_url = f"sqlite:///{layout.database}"
    api = _api_server(layout, database_url, detach=keep)

    def start_api() -> str:
        upgrade(database_url)
        token = create_token(name="demo", role="admin", database_url=database_url)
        engine_for(database_url).dispose()  # the API process owns the database from here
        api.start()
        api.wait_healthy(API_START_TIMEOUT)
        return token

    kept = False
    stack.callback(lambda: None if kept else api.stop())
    token = _timed("API", start_api, lambda _: f"{api.url} (SQLite {layout.database})")

    client = stack.enter_context(BackfillClient(api.url, token))
    _timed(
        "registered",
        lambda: _register(client, manifest, layout.media),
        lambda ids: (
            f"{len(ids)} media (legacy ones as schema_version 0), "
            f"{len(manifest.projects)} clip projects"
        ),
    )

    _timed(
        "Prefect",
        lambda: prefect.wait_healthy(prefect_startup_timeout()),
        lambda s: (
            f"temporary server {prefect.url}/api, up {s:.1f}s after launch "
            f"(history in {layout.prefect_home})"
        ),
    )

    kinds = [k for k in DEMO_ORDER if k in FLOWS]
    for kind in DEMO_ORDER:
        if kind not in FLOWS:
            console.print(f"  [yellow]{kind.value:<16} skipped: no flow registered yet[/yellow]")
    console.print()
    client_env = {
        "BACKFILL_API_URL": api.url,
        "BACKFILL_API_TOKEN": token,
        "BACKFILL_MEDIA_ROOT": str(layout.media),
        "BACKFILL_OUTPUT_ROOT": str(layout.compiled),
    }
    from unittest import mock  # not at import: every `backfill` command would pay for it

    with mock.patch.dict(os.environ, client_env):  # restored afterwards
        runs = _run_flows(kinds, f"{prefect.url}/api", layout.prefect_home)
        # Compiled videos are media records too: give them their fields in a second pass.
        again = _new_work(client, kinds)
        if again:
            names = ", ".join(k.value for k in again)
            console.print(f"  [dim]second pass, for what the first one created: {names}[/dim]")
            runs += _run_flows(again, f"{prefect.url}/api", layout.prefect_home)
    prefect.stop()

    console.print()
    table, with_failures = _coverage_table(client, api.url)
    console.print(table)
    failures = [f for k in with_failures for f in _failures(api.url, token, client, k, manifest)]
    if failures:
        console.print(_failure_table(failures))
    _where(layout)

    failed = [run for run in runs if run.error is not None]
    if keep:
        kept = True
        layout.api_pid.write_text(f"{api.process.pid}\n" if api.process else "")
        console.print(
            f"\n[bold]API kept running[/bold] at {api.url}/docs (pid "
            f"{api.process.pid if api.process else '?'})\n"
            f"  export BACKFILL_API_URL={api.url}\n"
            f"  export BACKFILL_API_TOKEN={token}\n"
            f"  uv run backfill status\n"
            f"  stop it with: kill $(cat {layout.api_pid})"
        )
    seconds = time.perf_counter() - started
    verdict = "[green]done[/green]" if not failed else f"[red]{len(failed)} run(s) failed[/red]"
    console.print(f"\n{verdict} in {seconds:.0f}s")
    return 1 if failed else 0


def _new_work(client: BackfillClient, kinds: list[BackfillKind]) -> list[BackfillKind]:
    """Kinds with pending records that never failed (records the first pass created)."""
    by_kind = {k.kind: k for k in client.coverage().kinds}
    return [
        kind
        for kind in kinds
        if kind in by_kind
        and by_kind[kind].pending - (by_kind[kind].failed - by_kind[kind].quarantined) > 0
    ]


def _where(layout: Layout) -> None:
    compiled = sorted(layout.compiled.glob("*.mp4")) if layout.compiled.is_dir() else []
    rows = [
        ("media, ground truth", f"{layout.media} (manifest.json: what each file really is)"),
        ("compiled videos", f"{layout.compiled} ({len(compiled)} files)"),
        ("the API's database", f"{layout.database} (SQLite; each applied batch in `audit`)"),
        ("Prefect run history", f"PREFECT_HOME={layout.prefect_home} uv run prefect server start"),
        ("logs", str(layout.logs)),
    ]
    console.print("\n[bold]results[/bold]")
    for name, where in rows:
        console.print(f"  {name:<20} {where}", soft_wrap=True, highlight=False)


def demo(
    keep: Annotated[
        bool, typer.Option(help="Leave the API running afterwards (prints its URL and token).")
    ] = False,
    workdir: Annotated[
        Path,
        typer.Option(
            file_okay=False, help="Where the corpus, the API database and Prefect's history go."
        ),
    ] = DEFAULT_WORKDIR,
) -> None:
    """The embedded default, end to end: sample corpus, API, every backfill, coverage."""
    raise typer.Exit(run_demo(keep=keep, workdir=workdir))


if __name__ == "__main__":  # `python -m ops.demo`, until `backfill demo` is wired
    typer.run(demo)
