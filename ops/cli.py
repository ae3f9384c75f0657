"""`backfill`: run backfills, see coverage, register media, and (`backfill api`) the server.

Exit codes: 0 success, 1 the run (or request) failed, 2 usage or configuration error.
Errors are one line on stderr, never a traceback. Prefect is imported only by `run`.
"""

from __future__ import annotations

import inspect
import logging
import os
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import annotated_types
import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from api.cli import app as api_app
from api.schemas import MAX_BATCH_ITEMS, BackfillKind, MediaIn, PlanPublic, ReprocessMode
from flows.client import APIError, AuthenticationError, BackfillClient, PermissionDeniedError
from flows.settings import (
    PREFECT_STARTUP_TIMEOUT_ENV,
    ClientSettings,
    ConfigError,
    load_settings,
    prefect_startup_timeout,
)
from flows.spec import BackfillParams
from ops.cli_corpus import sample_corpus
from ops.demo import demo
from ops.running import progress_bar, quiet_prefect_console, quiet_prefect_env, run_with_progress

if TYPE_CHECKING:
    from flows.engine import BackfillReport

app = typer.Typer(
    help="Safe, repeatable backfills over a media corpus, written through the API.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
media_app = typer.Typer(help="Media records: register files under the media root.")
app.add_typer(media_app, name="media")
app.add_typer(api_app, name="api")
app.command("sample-corpus")(sample_corpus)
app.command("demo")(demo)

console = Console()
errors = Console(stderr=True)

#: Files sent per `POST /media` by `media register`.
REGISTER_BATCH = 500


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one error line and return the Exit to raise."""
    errors.print(f"[red]error:[/red] {message}", markup=True, highlight=False, soft_wrap=True)
    return typer.Exit(code)


@contextmanager
def cli_errors() -> Iterator[None]:
    """Turn expected errors into one line and an exit code: 2 for config, 1 otherwise."""
    try:
        yield
    except ConfigError as exc:
        raise fail(str(exc), 2) from None
    except (AuthenticationError, PermissionDeniedError) as exc:
        raise fail(str(exc), 2) from None
    except APIError as exc:
        raise fail(str(exc), 1) from None


def _client(settings: ClientSettings) -> BackfillClient:
    return BackfillClient.from_settings(settings)


# --- run -----------------------------------------------------------------------------------


def _parse_params(pairs: list[str]) -> dict[str, str]:
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise fail(f"--param takes KEY=VALUE, got {pair!r}", 2)
        params[key.strip().replace("-", "_")] = value
    return params


#: Options of `backfill run` named otherwise than their field.
OPTION_NAMES = {"plan_id": ("--plan", "--plan-id")}


def _model_options(params: type[BaseModel]) -> list[inspect.Parameter]:
    """A `--name` option for each field of `params`, with the field's type, bounds and
    description. Each defaults to None: not given, the flow's own default applies."""
    options = []
    for name, field in params.model_fields.items():
        bounds: dict[str, Any] = {}
        for rule in field.metadata:
            if isinstance(rule, annotated_types.Ge):
                bounds["min"] = rule.ge
            elif isinstance(rule, annotated_types.Le):
                bounds["max"] = rule.le
        kind = field.annotation
        kinds = [a for a in typing.get_args(kind) if a is not type(None)] or [kind]
        names = OPTION_NAMES.get(name, ())
        option = typer.Option(*names, help=field.description, show_default=False, **bounds)
        options.append(
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=Annotated[kinds[0] | None, option],
            )
        )
    return options


def run(
    kind: BackfillKind,
    param: list[str] | None = None,
    verbose: bool = False,
    **options: Any,
) -> None:
    """Run one backfill flow here, with a progress bar and a summary table."""
    from flows.registry import FLOWS

    if kind not in FLOWS:
        raise fail(f"no flow for {kind.value} yet; available: {', '.join(FLOWS)}", 2)
    parameters = {k: v for k, v in options.items() if v is not None}
    parameters |= _parse_params(param or [])
    with cli_errors():
        settings = load_settings()
        settings.api_token()  # fail now, not after Prefect has started
        if not settings.MEDIA_ROOT.is_dir():
            raise ConfigError(f"BACKFILL_MEDIA_ROOT {settings.MEDIA_ROOT} is not a directory")
        startup = prefect_startup_timeout()
    # Without PREFECT_API_URL Prefect starts a temporary server, and gives it 20 s by default:
    # too little on a busy machine.
    os.environ[PREFECT_STARTUP_TIMEOUT_ENV] = str(startup)
    quiet_prefect_env(verbose=verbose)
    report = _run_flow(kind, parameters, verbose)
    _print_report(report)
    if report.status != "completed":
        raise fail(f"{kind.value} run failed: {report.reason}", 1)


_run_arguments = [
    inspect.Parameter(
        "kind",
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        annotation=Annotated[BackfillKind, typer.Argument(help="The backfill to run.")],
    ),
    *_model_options(BackfillParams),
    inspect.Parameter(
        "param",
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[
            list[str] | None,
            typer.Option("--param", "-p", help="A kind option, KEY=VALUE (e.g. algorithm=md5)."),
        ],
    ),
    inspect.Parameter(
        "verbose",
        inspect.Parameter.KEYWORD_ONLY,
        default=False,
        annotation=Annotated[bool, typer.Option(help="Show Prefect's log lines.")],
    ),
]
# `backfill run`'s options are the fields of the parameters every flow takes.
run.__signature__ = inspect.Signature(_run_arguments, return_annotation=None)  # type: ignore[attr-defined]
run.__annotations__ = {p.name: p.annotation for p in _run_arguments}
app.command()(run)


@contextmanager
def _local_run_settings() -> Iterator[None]:
    """No flow-run heartbeats for a run in this terminal, unless asked for.

    Prefect joins its heartbeat thread when a run ends, and that thread sleeps in 1 s steps:
    every run paid 0-1 s at random for a signal that only a crash-detection automation
    reads. The operator watching `backfill run` sees a crash. Deployments keep Prefect's
    heartbeats; PREFECT_FLOWS_HEARTBEAT_FREQUENCY brings them back here.
    """
    from prefect.settings import temporary_settings

    if "PREFECT_FLOWS_HEARTBEAT_FREQUENCY" in os.environ:
        yield
        return
    with temporary_settings(updates={"flows.heartbeat_frequency": None}):
        yield


@contextmanager
def _prefect_start_errors() -> Iterator[None]:
    """Prefect's temporary server that does not start: one line, not its output and ours."""
    try:
        yield
    except RuntimeError as exc:
        if "ephemeral Prefect API server" not in str(exc):
            raise
        seconds = os.environ.get(PREFECT_STARTUP_TIMEOUT_ENV, "?")
        raise fail(
            f"the temporary Prefect server did not start within {seconds}s "
            f"({PREFECT_STARTUP_TIMEOUT_ENV}); raise it, or set PREFECT_API_URL to a "
            "running Prefect server",
            1,
        ) from None


def _run_flow(kind: BackfillKind, parameters: dict[str, Any], verbose: bool) -> BackfillReport:
    from prefect.exceptions import ParameterTypeError, SignatureMismatchError
    from pydantic import ValidationError

    from flows.engine import BackfillFailed
    from flows.registry import load_flow

    flow = load_flow(kind)
    prefect_flows = logging.getLogger("prefect.flows")
    level, prefect_flows.level = prefect_flows.level, logging.CRITICAL  # we say it in one line
    try:
        flow.validate_parameters(parameters)
    except (ParameterTypeError, SignatureMismatchError) as exc:
        raise fail(f"invalid parameters for {kind.value}: {_one_line(exc)}", 2) from None
    finally:
        prefect_flows.level = level

    with (
        quiet_prefect_console(verbose=verbose),
        progress_bar(errors, transient=True) as bar,
        _local_run_settings(),
        _prefect_start_errors(),
    ):
        state = run_with_progress(kind, parameters, bar)
    if state.is_completed():
        result: BackfillReport = state.result()
        return result
    outcome = state.result(raise_on_failure=False)
    if isinstance(outcome, BackfillFailed):
        return outcome.report
    if isinstance(outcome, ValidationError):  # parameters that only fail together
        raise fail(f"invalid parameters for {kind.value}: {_one_line(outcome)}", 2)
    if isinstance(outcome, Exception):
        with cli_errors():
            raise outcome
        raise fail(f"{kind.value} run failed: {_one_line(outcome)}", 1)
    raise fail(f"{kind.value} run ended {state.type.value}: {state.message}", 1)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _print_report(report: BackfillReport) -> None:
    table = Table(title=f"{report.kind.value}: {report.status}", show_header=False)
    table.add_column("metric", style="bold")
    table.add_column("value", overflow="fold")
    for row in report.table():
        table.add_row(str(row["metric"]), str(row["value"]))
    console.print(table)


# --- status --------------------------------------------------------------------------------


@app.command()
def status() -> None:
    """Coverage per kind (file-hashing: per algorithm): total, done, pending, failed,
    quarantined, and the done records by compute version."""
    with cli_errors():
        settings = load_settings()
        with _client(settings) as client:
            coverage = client.coverage()
    table = Table(title=f"coverage at {settings.API_URL}")
    table.add_column("kind", no_wrap=True)  # the one column never cut, at any width
    for name in ("total", "done", "pending", "failed", "quarantined", "done %"):
        table.add_column(name, justify="right")
    table.add_column("by version")
    for k in coverage.kinds:
        share = f"{100 * k.done / k.total:.1f}" if k.total else "-"
        values = (k.total, k.done, k.pending, k.failed, k.quarantined)
        name = f"{k.kind.value} ({k.algorithm})" if k.algorithm else k.kind.value
        versions = " ".join(f"v{v}:{n}" for v, n in sorted(k.versions.items())) or "-"
        table.add_row(name, *(str(v) for v in values), share, versions)
    _print_whole(table)


def _print_whole(table: Table) -> None:
    """Print `table` on the terminal's width; into a pipe or a file (80 columns to rich), at
    the table's own width, so no count is cut to `99000…` (a million records are 7 digits)."""
    out = console
    if not console.is_terminal:
        from rich.measure import Measurement

        wide = console.options.update_width(10_000)
        out = Console(width=max(console.width, Measurement.get(console, wide, table).maximum))
    out.print(table)


# --- media register ------------------------------------------------------------------------


def _walk(directory: Path) -> Iterator[Path]:
    """Regular-looking files under `directory`, sorted, not following directory links."""
    for base, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(base) / name


def _describe(root: Path, path: Path) -> MediaIn:
    """A `MediaIn` for one file, typed by content; `MediaError` if it is not usable media."""
    from flows.compute.probe import probe
    from flows.media import resolve_media_path

    uri = path.relative_to(root).as_posix()
    real = resolve_media_path(root, uri)
    info = probe(real)
    return MediaIn(uri=uri, media_type=info.media_type, size_bytes=real.stat().st_size)


@media_app.command("register")
def register(
    directory: Annotated[Path, typer.Argument(help="A folder under BACKFILL_MEDIA_ROOT.")],
    batch_size: Annotated[
        int, typer.Option(min=1, max=MAX_BATCH_ITEMS, help="Files per POST.")
    ] = REGISTER_BATCH,
) -> None:
    """Register every media file under DIRECTORY (typed by content); skip and list the rest."""
    from concurrent.futures import ThreadPoolExecutor

    from rich.progress import MofNCompleteColumn, Progress

    from flows.compute.errors import MediaError

    with cli_errors():
        settings = load_settings()
        root = settings.MEDIA_ROOT.resolve()
        folder = directory.resolve()
        if not folder.is_dir():
            raise ConfigError(f"{directory} is not a directory")
        if not folder.is_relative_to(root):
            raise ConfigError(f"{directory} is not under BACKFILL_MEDIA_ROOT ({root})")
        paths = [root / p.relative_to(root) for p in _walk(folder)]
        counts = {"created": 0, "existing": 0, "rejected": 0, "skipped": 0}
        problems: list[str] = []

        def describe(path: Path) -> MediaIn | str:
            try:
                return _describe(root, path)
            except (MediaError, OSError, ValueError) as exc:
                return f"{path.relative_to(root).as_posix()}: {exc}"

        with (
            _client(settings) as client,
            ThreadPoolExecutor(max_workers=2 * (os.cpu_count() or 1)) as pool,
            Progress(*Progress.get_default_columns(), MofNCompleteColumn(), console=errors) as bar,
        ):
            task_id = bar.add_task("registering", total=len(paths))
            for start in range(0, len(paths), batch_size):
                batch: list[MediaIn] = []
                for described in pool.map(describe, paths[start : start + batch_size]):
                    if isinstance(described, str):
                        counts["skipped"] += 1
                        problems.append(f"skipped {described}")
                    else:
                        batch.append(described)
                if batch:
                    result = client.register_media(batch)
                    for item in result.items:
                        counts[item.status] += 1
                        if item.status == "rejected":
                            problems.append(f"rejected {item.uri}: {item.reason}")
                bar.advance(task_id, min(batch_size, len(paths) - start))
    for line in problems[:20]:
        errors.print(f"[yellow]{line}[/yellow]", markup=True, highlight=False, soft_wrap=True)
    if len(problems) > 20:
        errors.print(f"[yellow]... and {len(problems) - 20} more[/yellow]", markup=True)
    table = Table(title=f"registered {folder}", show_header=False)
    for name, value in counts.items():
        table.add_row(name, str(value))
    console.print(table)


# --- media import --------------------------------------------------------------------------


def _count_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


@media_app.command("import")
def import_(
    source: Annotated[str, typer.Argument(metavar="FILE", help="NDJSON file, or - for stdin.")],
    batch_size: Annotated[
        int, typer.Option(min=1, max=MAX_BATCH_ITEMS, help="Records per POST.")
    ] = MAX_BATCH_ITEMS,
) -> None:
    """Register the records of an NDJSON file (one MediaIn object a line) through the API.

    Idempotent: a uri already known is counted as already there, never registered twice.
    A malformed line is reported with its number and the rest is imported (exit code 1)."""
    import sys
    import time

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from ops.importer import ImportReport, import_media

    with cli_errors():
        settings = load_settings()
        if source == "-":
            stream: typing.IO[bytes] = sys.stdin.buffer
            total = None
        else:
            path = Path(source)
            if not path.is_file():
                raise ConfigError(f"{source} is not a file")
            total = _count_lines(path)
            stream = path.open("rb")
        started = time.monotonic()
        with (
            stream,
            _client(settings) as client,
            Progress(
                TextColumn("importing"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:>8,.0f} records/s"),
                TimeElapsedColumn(),
                console=errors,
            ) as bar,
        ):
            task_id = bar.add_task("import", total=total, rate=0.0)

            def progress(report: ImportReport) -> None:
                done = report.created + report.existing + report.rejected
                rate = done / max(time.monotonic() - started, 1e-9)
                bar.update(task_id, completed=done + len(report.bad_lines), rate=rate)

            report = import_media(client, stream, batch_size=batch_size, progress=progress)
    elapsed = time.monotonic() - started
    problems = [f"line {b.line}: {b.reason}" for b in report.bad_lines]
    problems += [f"rejected {r}" for r in report.rejections]
    for line in problems[:20]:
        errors.print(f"[yellow]{line}[/yellow]", markup=True, highlight=False, soft_wrap=True)
    if len(problems) > 20:
        errors.print(f"[yellow]... and {len(problems) - 20} more[/yellow]", markup=True)
    table = Table(title=f"imported {source}", show_header=False)
    rows = {
        "records": report.sent,
        "created": report.created,
        "already there": report.existing,
        "rejected": report.rejected,
        "malformed lines": len(report.bad_lines),
    }
    for name, value in rows.items():
        table.add_row(name, str(value))
    table.add_row("records/s", f"{report.sent / max(elapsed, 1e-9):,.0f}")
    console.print(table)
    if report.bad_lines or report.rejected:
        raise typer.Exit(1)


# --- plan, runs ------------------------------------------------------------------------------

#: `-p` keys of `backfill plan` that are integers.
INT_PARAMETERS = ("shard_index", "shard_count", "limit")


@app.command()
def plan(
    kind: Annotated[BackfillKind, typer.Argument(help="The backfill to plan.")],
    mode: Annotated[
        ReprocessMode,
        typer.Option(help="Which records: missing (not done), failed (the ledger), stale."),
    ] = ReprocessMode.MISSING,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            "-p",
            help="A filter, KEY=VALUE: media_type, algorithm, shard_index, shard_count, limit.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
) -> None:
    """Store what a run of KIND would process now (each record with its revision) as a plan;
    `backfill run KIND --plan ID` then processes exactly that plan."""
    from pydantic import ValidationError

    from api.schemas import PlanCreate
    from flows.registry import load_spec

    parameters: dict[str, Any] = _parse_params(param or [])
    for key in INT_PARAMETERS:
        if key in parameters:
            try:
                parameters[key] = int(parameters[key])
            except ValueError:
                raise fail(f"{key} must be an integer, got {parameters[key]!r}", 2) from None
    try:
        plan_in = PlanCreate(
            kind=kind,
            mode=mode,
            compute_version=load_spec(kind).compute_version,
            parameters=parameters,
        )
    except ValidationError as exc:
        raise fail(f"invalid plan: {_one_line(exc)}", 2) from None
    with cli_errors():
        settings = load_settings()
        with _client(settings) as client:
            made = client.create_plan(plan_in)
    if as_json:
        typer.echo(made.model_dump_json(indent=2))
        return
    _print_plan(made)


def _print_plan(made: PlanPublic) -> None:
    from flows.plan import plan_table

    table = Table(title=f"plan {made.id}: {made.count} records of {made.kind.value}")
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for row in plan_table(made):
        table.add_row(str(row["field"]), str(row["value"]))
    console.print(table)
    console.print(f"apply it: uv run backfill run {made.kind.value} --plan {made.id}")


@app.command()
def runs(
    kind: Annotated[BackfillKind | None, typer.Option(help="Only runs of this kind.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many, newest first.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print the runs as JSON.")] = False,
) -> None:
    """The record of every run, newest first: who, what, when, how it ended."""
    with cli_errors():
        settings = load_settings()
        with _client(settings) as client:
            page = client.runs(kind=kind, limit=limit)
    if as_json:
        typer.echo(page.model_dump_json(indent=2))
        return
    from rich import box

    table = Table(title=f"runs at {settings.API_URL} (UTC)", box=box.SIMPLE_HEAD)
    for name in ("started", "kind", "mode", "state"):
        table.add_column(name, no_wrap=True)
    for name in ("applied", "unchanged", "failed", "skipped"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("plan (changed)", no_wrap=True)
    table.add_column("by")
    table.add_column("flow run", no_wrap=True)
    for r in page.items:
        state = r.state + (" (dry run)" if r.dry_run else "")
        events = ", ".join(e.event for e in r.events)
        table.add_row(
            f"{r.started_at:%m-%d %H:%M}",
            r.kind.value,
            r.mode.value if r.mode else "-",
            state + (f" [{events}]" if events else ""),
            *(str(v) for v in (r.applied, r.unchanged, r.failed + r.rejected, r.skipped)),
            f"{r.plan_id} ({r.changed_since_plan})" if r.plan_id else "-",
            r.token_name,
            r.flow_run_id[:8],  # enough to find it in the UI; --json has it whole
        )
    console.print(table)


# --- resume (circuit breaker) ---------------------------------------------------------------


@app.command()
def resume(
    flow_run_id: Annotated[str, typer.Argument(help="The paused flow run's id.")],
) -> None:
    """Resume a flow run the circuit breaker paused (what Resume in the Prefect UI does)."""
    if not os.environ.get("PREFECT_API_URL"):
        raise fail("PREFECT_API_URL is not set: which Prefect server holds the run?", 2)
    from flows.breaker import resume as resume_run

    try:
        state = resume_run(flow_run_id)
    except ValueError as exc:
        raise fail(str(exc), 1) from None
    console.print(f"flow run {flow_run_id}: {state}")


if __name__ == "__main__":  # pragma: no cover - the console script calls `app`
    app(prog_name="backfill")
