"""Load: the API (a real uvicorn process over the session's database: SQLite file, or
PostgreSQL with BACKFILL_TEST_DATABASE_URL) under 8 concurrent clients posting batches of
results for 20 s (BACKFILL_LOAD_SECONDS; 60 for a steadier figure): both cores busy
throughout, so the default run keeps it short; every write is checked whatever the length.

Asserts no error response and sane bounds only (no timing targets); reports p50/p99
latency per request and rows/s, printed and written to load.json in the test's tmp_path
(nothing is written into the repository; the path is printed too).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from api.schemas import BackfillKind, DurationResult, MediaIn
from tests.conftest import LiveApi
from tests.reliability.helpers import Db, admin_client

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SECONDS = float(os.environ.get("BACKFILL_LOAD_SECONDS", "20"))
CLIENTS = 8
RECORDS = 50_000
BATCH = 250


@dataclass
class Worker:
    """One client's share: its own ids, its own HTTP client, what it sent and saw."""

    ids: list[int]
    latencies: list[float] = field(default_factory=list)
    rows: int = 0
    applied: int = 0
    errors: list[str] = field(default_factory=list)
    #: Per record: how many of this client's batches applied to it, and the last value.
    writes: dict[int, int] = field(default_factory=dict)
    last: dict[int, float] = field(default_factory=dict)


def value(rid: int, round_no: int) -> float:
    """A valid duration that differs from one round to the next (so every write applies)."""
    return round_no * 10.0 + (rid % 7) / 8


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@pytest.mark.timeout(SECONDS + 180)
def test_api_under_eight_concurrent_clients(
    api: LiveApi, db: Db, database_url: str, tmp_path: Path
) -> None:
    with admin_client(api) as client:
        ids: list[int] = []
        for start in range(0, RECORDS, 1000):
            items = [
                MediaIn(uri=f"load/{n // 1000:03d}/{n:06d}.wav", media_type="audio")
                for n in range(start, start + 1000)
            ]
            ids += [i.id for i in client.register_media(items).items if i.id is not None]
    assert len(ids) == RECORDS
    workers = [Worker(ids=ids[n::CLIENTS]) for n in range(CLIENTS)]
    go = threading.Barrier(CLIENTS + 1)
    deadline: list[float] = []

    def post_for_a_while(worker: Worker) -> None:
        # Its own client (connection pool), no retries: an error must show, not be retried.
        with admin_client(api, max_retries=0) as client:
            go.wait()
            round_no = 0
            while time.monotonic() < deadline[0]:
                round_no += 1
                for start in range(0, len(worker.ids), BATCH):
                    if time.monotonic() >= deadline[0]:
                        return
                    chunk = worker.ids[start : start + BATCH]
                    items = [
                        DurationResult(record_id=r, duration=value(r, round_no)) for r in chunk
                    ]
                    began = time.perf_counter()
                    try:
                        result = client.post_results(BackfillKind.MEDIA_DURATION, items)
                    except Exception as exc:  # reported below: the test fails on any error
                        worker.errors.append(f"{type(exc).__name__}: {exc}")
                        continue
                    worker.latencies.append(time.perf_counter() - began)
                    worker.rows += len(items)
                    worker.applied += result.applied
                    if result.rejected or result.applied != len(items):
                        worker.errors.append(f"unexpected result: {result!r}"[:300])
                        continue
                    for r in chunk:
                        worker.writes[r] = worker.writes.get(r, 0) + 1
                        worker.last[r] = value(r, round_no)

    threads = [threading.Thread(target=post_for_a_while, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    deadline.append(time.monotonic() + SECONDS)
    started = time.perf_counter()
    go.wait()
    for thread in threads:
        thread.join(SECONDS + 120)
    elapsed = time.perf_counter() - started

    latencies = [x for w in workers for x in w.latencies]
    rows = sum(w.rows for w in workers)
    figures = {
        "seconds": round(elapsed, 2),
        "clients": CLIENTS,
        "batch_size": BATCH,
        "records": RECORDS,
        "requests": len(latencies),
        "rows": rows,
        "rows_per_second": round(rows / elapsed, 1),
        "requests_per_second": round(len(latencies) / elapsed, 1),
        "latency_p50_ms": round(1000 * statistics.median(latencies), 1) if latencies else None,
        "latency_p99_ms": round(1000 * percentile(latencies, 0.99), 1) if latencies else None,
        "latency_max_ms": round(1000 * max(latencies), 1) if latencies else None,
        "errors": sum(len(w.errors) for w in workers),
        "database": make_url(database_url).get_backend_name(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
    }
    report = tmp_path / "load.json"
    report.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"\nload ({report}): {json.dumps(figures)}")

    assert not any(t.is_alive() for t in threads)
    errors = [e for w in workers for e in w.errors]
    assert not errors, f"{len(errors)} errors, e.g. {errors[:3]}"
    assert len(latencies) >= CLIENTS  # every client got answers
    assert percentile(latencies, 0.99) < 10.0  # a sane bound, not a target
    # Under load, nothing lost and nothing doubled: every applied write is in the audit,
    # each record holds its client's last value, and its revision counts its writes.
    assert db.applied("media-duration") == sum(w.applied for w in workers) == rows
    expected = {r: (w.last.get(r), 1 + w.writes.get(r, 0)) for w in workers for r in w.ids}
    found = {
        row.id: (row.duration, row.revision)
        for row in db.rows("SELECT id, duration, revision FROM media")
    }
    assert found == expected
