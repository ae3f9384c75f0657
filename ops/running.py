"""Running a backfill flow in this terminal: Prefect's console kept quiet, and a progress bar
moved by the engine's progress updates. Shared by `backfill run` and `backfill demo`.

Prefect is imported only inside the functions: call `quiet_prefect_env` before it is.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from api.schemas import BackfillKind

if TYPE_CHECKING:
    from prefect.client.schemas.objects import State


def quiet_prefect_env(*, verbose: bool = False) -> None:
    """Before Prefect is imported: a throwaway local server has nobody to send telemetry to,
    and Prefect's console lines would tear through the progress bars (the API still gets
    them)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")


@contextmanager
def quiet_prefect_console(*, verbose: bool = False) -> Iterator[None]:
    """Keep Prefect's console to warnings: the command reports the run's error itself, in one
    line, so Prefect's ERROR lines (and tracebacks) would only say it twice.

    Only the console: the run's log lines still reach the Prefect API (and UI) in full.
    """
    from prefect.logging.handlers import PrefectConsoleHandler

    def no_traceback(record: logging.LogRecord) -> bool:
        return record.exc_info is None and record.levelno < logging.ERROR

    handlers = [h for h in logging.getLogger().handlers if isinstance(h, PrefectConsoleHandler)]
    levels = [h.level for h in handlers]
    if not verbose:
        for handler in handlers:
            handler.setLevel(max(handler.level, logging.WARNING))
            handler.addFilter(no_traceback)
    try:
        yield
    finally:
        for handler, level in zip(handlers, levels, strict=True):
            handler.setLevel(level)
            handler.removeFilter(no_traceback)


def progress_bar(console: Console, *, transient: bool = False) -> Progress:
    """One bar per run: kind, bar, records done of expected, counts, time."""
    columns = (
        TextColumn("  [bold]{task.description:<16}[/bold]"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TextColumn("{task.fields[counts]}"),
        TimeElapsedColumn(),
    )
    return Progress(*columns, console=console, transient=transient, disable=not console.is_terminal)


def run_with_progress(kind: BackfillKind, parameters: dict[str, Any], bar: Progress) -> State[Any]:
    """Run the flow of `kind` here with `parameters`, moving a task of `bar`; its final state."""
    from flows.engine import ProgressUpdate, progress_listener
    from flows.registry import load_flow

    flow = load_flow(kind)
    task_id = bar.add_task(kind.value, total=None, counts="starting")

    def show(update: ProgressUpdate) -> None:
        counts = (
            f"applied {update.applied}  unchanged {update.unchanged}  "
            f"rejected {update.rejected}  failed {update.failed}"
        )
        total = max(update.expected or 0, update.processed) or None
        bar.update(task_id, completed=update.processed, total=total, counts=counts)

    with progress_listener(show):
        state = cast("State[Any]", flow(**parameters, return_state=True))
    done = next(t.completed for t in bar.tasks if t.id == task_id) or 1
    bar.update(task_id, total=done, completed=done if state.is_completed() else 0)
    return state
