"""The benchmark suite's result rows, the machine they ran on, the table and the JSON file.

uv run python -m benchmarks.report [var/benchmarks.json]    # that file as Markdown
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from math import isfinite
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.table import Table

Met = Literal["yes", "no", "n/a", "skipped", "error"]


@dataclass
class Row:
    """One line of the table: a figure, the baseline it is compared with, and the target."""

    key: str
    name: str
    figure: float | None = None
    unit: str = ""
    baseline: float | None = None
    baseline_unit: str = ""
    ratio: float | None = None
    target: str = ""
    met: Met = "n/a"
    notes: str = ""
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)


def fmt(value: float | None, unit: str = "") -> str:
    """A figure for the table: three significant digits or so, and its unit."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".strip()


def met(ok: bool) -> Met:
    return "yes" if ok else "no"


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, Any]:
    """What the figures depend on; the load average after is added at the end of the run."""
    try:
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kib = 0
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": round(mem_kib / (1 << 20), 1),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "prefect": _version("prefect"),
        "sqlalchemy": _version("sqlalchemy"),
        "load_average_before": load_average(),
    }


def table(rows: list[Row], title: str) -> Table:
    out = Table(title=title, title_justify="left")
    for column in ("", "benchmark", "figure", "baseline", "ratio", "target", "met", "notes"):
        justify: Literal["left", "right"] = (
            "right" if column in ("figure", "baseline", "ratio") else "left"
        )
        out.add_column(column, justify=justify, overflow="fold")
    styles = {"yes": "green", "no": "red", "error": "red", "skipped": "yellow"}
    for row in rows:
        style = styles.get(row.met, "")
        out.add_row(
            row.key,
            row.name,
            fmt(row.figure, row.unit),
            fmt(row.baseline, row.baseline_unit),
            f"{fmt(row.ratio)}x" if row.ratio is not None and isfinite(row.ratio) else "-",
            row.target or "-",
            f"[{style}]{row.met}[/{style}]" if style else row.met,
            row.notes,
        )
    return out


def print_report(rows: list[Row], info: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    console.print(table(rows, "corpus-backfills benchmarks"))
    console.print(
        f"machine: {info['cpu_count']} CPUs, {info['cpu_model']}, {info['memory_gib']} GiB; "
        f"Python {info['python']}, Prefect {info['prefect']}; load average before "
        f"{info['load_average_before']}, after {info.get('load_average_after', '?')}"
    )


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def write_json(path: Path, rows: list[Row], info: dict[str, Any], options: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": info,
        "options": options,
        "rows": [asdict(row) for row in rows],
    }
    path.write_text(json.dumps(_finite(document), indent=2, default=str) + "\n")


def markdown(document: dict[str, Any]) -> str:
    """A JSON file of `write_json` as the Markdown table and machine line of the docs."""
    m = document["machine"]
    lines = [
        f"Machine: {m['cpu_count']} CPUs, {m['cpu_model']}, {m['memory_gib']} GiB, "
        f"{m['platform']}; Python {m['python']}, Prefect {m['prefect']}; load average "
        f"before {m['load_average_before']}, after {m.get('load_average_after')}; "
        f"run of {document['created_at']}, {m.get('seconds', '?')} s"
        + (" (--quick)" if document["options"].get("quick") else ""),
        "",
        "| row | benchmark | figure | baseline | ratio | target | met | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in document["rows"]:
        ratio = f"{fmt(r['ratio'])}x" if r["ratio"] is not None else "-"
        cells = [
            r["key"],
            r["name"],
            fmt(r["figure"], r["unit"]),
            fmt(r["baseline"], r["baseline_unit"]),
            ratio,
            r["target"] or "-",
            r["met"],
            r["notes"].replace("|", "/"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    source = Path(sys.argv[1] if len(sys.argv) > 1 else "var/benchmarks.json")
    print(markdown(json.loads(source.read_text())))
