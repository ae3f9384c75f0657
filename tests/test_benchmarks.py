"""A smoke test of the benchmark suite (not the benchmarks themselves): the table and JSON
writer, and the legacy row-by-row script against the API path on 200 rows."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from rich.console import Console
from sqlalchemy import text

from api.core.db import make_engine
from api.migrate import upgrade
from benchmarks.api_apply import driver, seed
from benchmarks.legacy_row_by_row import compare, legacy_update
from benchmarks.report import Row, machine, markdown, print_report, write_json


def test_table_and_json(tmp_path: Path) -> None:
    rows = [
        Row("a", "API apply vs direct writes, SQLite", 50_000.0, "rows/s", 100_000.0, "rows/s"),
        Row("b", "file-hashing vs openssl", math.nan, "MiB/s", ratio=math.inf, met="n/a"),
        Row("a", "API apply vs direct writes, PostgreSQL", met="skipped", notes="no initdb"),
    ]
    rows[0].ratio, rows[0].target, rows[0].met = 0.5, "API >= 0.5x direct", "yes"
    info = machine()
    info["load_average_after"] = info["load_average_before"]
    console = Console(record=True, width=200)
    print_report(rows, info, console)
    shown = console.export_text()
    assert "50,000 rows/s" in shown and "0.50x" in shown and "skipped" in shown

    path = tmp_path / "out" / "bench.json"
    write_json(path, rows, info, {"quick": True})
    document = json.loads(path.read_text())  # strict: NaN/inf must have become null
    assert document["machine"]["cpu_count"] == info["cpu_count"]
    assert [r["met"] for r in document["rows"]] == ["yes", "n/a", "skipped"]
    assert document["rows"][1]["figure"] is None and document["rows"][1]["ratio"] is None
    table = markdown(document)
    assert (
        "| a | API apply vs direct writes, SQLite | 50,000 rows/s | 100,000 rows/s | 0.50x |"
        in table
    )


@pytest.mark.slow  # starts the API and times both paths
def test_legacy_script_and_api_path(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'legacy.db'}"
    upgrade(url)
    ids = seed(url, 200)
    assert legacy_update(url, [(i, 1.5) for i in ids]) == 200
    engine = make_engine(url)
    with engine.connect() as conn:
        found = conn.execute(text("SELECT duration, revision FROM media")).all()
    engine.dispose()
    assert found == [(1.5, 2)] * 200

    figures = compare(rows=200, batch=100)
    assert figures["rows"] == 200
    assert figures["api_rows_per_s"] > 0 and figures["legacy_rows_per_s"] > 0


def test_driver_baseline_writes_every_row_once(tmp_path: Path) -> None:
    """Row a's floor (sqlite3's own executemany) does the same work as the API path."""
    url = f"sqlite:///{tmp_path / 'driver.db'}"
    upgrade(url)
    ids = seed(url, 250)
    assert driver(url, ids, 100, 2.5) > 0
    engine = make_engine(url)
    with engine.connect() as conn:
        found = conn.execute(text("SELECT duration, revision FROM media")).all()
    engine.dispose()
    assert found == [(2.5, 2)] * 250
