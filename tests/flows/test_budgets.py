"""A run's pace, `max_records_per_second`: the `Pacer` itself with chunks on several threads,
then a real run over real files against the live API, measured by the API's own timestamps
(one audit row per applied batch)."""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from flows.budgets import Pacer, PacerStopped
from flows.file_hashing import file_hashing
from flows.spec import BackfillParams
from tests.conftest import LiveApi
from tests.helpers import file_items, register


def most_in_a_window(times: list[float], counts: list[int], window: float) -> int:
    """The most records whose times fall in one half-open window [t, t + window)."""
    pairs = sorted(zip(times, counts, strict=True))
    return max(sum(n for u, n in pairs if t <= u < t + window) for t, _ in pairs)


def test_the_pacer_keeps_chunks_on_many_threads_within_the_rate() -> None:
    rate, chunk, threads, rounds = 200.0, 10, 4, 5  # 200 records at 200/s: about 1 s
    pacer = Pacer(rate)
    due: list[float] = []
    lock = threading.Lock()
    start = time.monotonic()

    def chunks() -> None:
        for _ in range(rounds):
            asked = time.monotonic()
            waited = pacer.take(chunk)
            with lock:
                due.append(asked + waited - start)  # when the pacer let this chunk go

    workers = [threading.Thread(target=chunks) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    wall = time.monotonic() - start

    records = threads * rounds * chunk
    assert wall >= records / rate * 0.99  # 200 records at 200/s: at least 1 s
    due.sort()
    # Each chunk is due one chunk's time (0.05 s) after the one before it, or later.
    gaps = [b - a for a, b in zip(due, due[1:], strict=False)]
    assert min(gaps) >= chunk / rate * 0.99
    # Any 0.25 s window: at most 50 records, plus one chunk.
    assert most_in_a_window(due, [chunk] * len(due), 0.25) <= rate * 0.25 + chunk


def test_idle_time_is_not_saved_up_for_a_burst() -> None:
    pacer = Pacer(100.0)
    assert pacer.take(5) == pytest.approx(0.05, abs=0.02)
    time.sleep(0.3)  # the run is busy elsewhere: no credit builds up
    assert pacer.take(5) >= 0.04


def test_a_stopped_pacer_wakes_its_waiting_chunks() -> None:
    pacer = Pacer(1.0)
    pacer.take(1)  # the next chunk of 100 is due in 100 s
    threading.Timer(0.2, pacer.stop).start()
    started = time.monotonic()
    with pytest.raises(PacerStopped):
        pacer.take(100)
    assert time.monotonic() - started < 5


def test_the_parameter_is_a_positive_rate_or_empty() -> None:
    assert BackfillParams().max_records_per_second is None
    assert BackfillParams(max_records_per_second=0.5).max_records_per_second == 0.5
    for bad in (0, -1):
        with pytest.raises(ValidationError, match="greater than 0"):
            BackfillParams(max_records_per_second=bad)
    # The Prefect UI form (the flow's parameters) and `backfill run` take it, described.
    schema = file_hashing.parameters.properties["max_records_per_second"]
    assert "records a second" in schema["description"]
    from ops.cli import run

    assert "max_records_per_second" in run.__signature__.parameters  # type: ignore[attr-defined]


@pytest.mark.e2e
@pytest.mark.usefixtures("prefect_api_url")
def test_a_paced_run_stays_within_its_records_per_second(
    client_env: LiveApi, media_root: Path
) -> None:
    rate, batch, total = 10.0, 10, 60
    paths = []
    for i in range(total):
        path = media_root / "paced" / f"{i:03d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(256 + i))
        paths.append(path)
    register(client_env, file_items(media_root, paths))

    started = time.monotonic()
    report = file_hashing(batch_size=batch, concurrency=3, max_records_per_second=rate)
    wall = time.monotonic() - started

    assert (report.status, report.applied) == ("completed", total)
    # 60 records at 10/s: at least 6 s of the run's schedule (the first chunk waits its 1 s).
    assert wall >= total / rate * 0.97 and report.seconds >= total / rate * 0.97
    assert report.records_per_second <= rate * 1.01
    # What the API saw: one applied batch a second or slower, never more than the rate plus
    # one chunk in any 1 s window (three chunks computing at once, all ready early).
    with sqlite3.connect(client_env.database_url.removeprefix("sqlite:///")) as db:
        rows = db.execute(
            "SELECT created_at, applied FROM audit WHERE kind = 'file-hashing' ORDER BY id"
        ).fetchall()
    assert sum(applied for _, applied in rows) == total and len(rows) == total // batch
    times = [dt.datetime.fromisoformat(created).timestamp() for created, _ in rows]
    assert times[-1] - times[0] >= (len(rows) - 1) * batch / rate * 0.9
    assert most_in_a_window(times, [applied for _, applied in rows], 1.0) <= rate + batch
