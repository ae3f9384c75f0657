"""Bulk import rate: N records of NDJSON through `backfill media import`'s code path.

    uv run python -m benchmarks.import_rate                    # SQLite and PostgreSQL, 100k
    uv run python -m benchmarks.import_rate --records 1000000 --backend sqlite

Writes N `MediaIn` lines to a file, serves a fresh migrated database with uvicorn on
127.0.0.1, imports the file with `ops.importer.import_media` (the command's engine: batches
of 1,000, four in flight, an Idempotency-Key per batch) and prints records/s; then imports it
again and prints the re-import rate (every record already there). PostgreSQL is a throwaway
cluster (`benchmarks.pg`) unless BACKFILL_BENCH_PG_URL names one.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import psutil

from api.core.db import make_engine
from api.migrate import upgrade
from api.services.tokens import create_token
from benchmarks.api_apply import serve
from benchmarks.hashing import free_port
from benchmarks.pg import Unavailable, postgres
from flows.client import BackfillClient
from ops.importer import import_media


def write_ndjson(path: Path, n: int) -> None:
    with path.open("w") as f:
        for i in range(n):
            kind = "audio" if i % 2 else "video"
            ext = "wav" if i % 2 else "mp4"
            f.write(f'{{"uri": "bulk/{i // 1000}/{i}.{ext}", "media_type": "{kind}", ')
            f.write(f'"size_bytes": {1000 + i}}}\n')


def _seconds(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
    except psutil.Error:  # ended meanwhile
        return 0.0
    return times.user + times.system


def _postmaster(url: str) -> psutil.Process | None:
    """PostgreSQL's postmaster (the parent of every process of the cluster), or None: SQLite
    runs in the server's process, and a cluster on another machine is not counted."""
    if not url.startswith("postgresql"):
        return None
    engine = make_engine(url, pool_size=1)
    try:
        with engine.connect() as conn:
            backend = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        postmaster = psutil.Process(psutil.Process(backend).ppid())
        return postmaster if "postgres" in postmaster.name() else None  # else not this host's
    except psutil.Error:
        return None
    finally:
        engine.dispose()


class _Cpu:
    """CPU seconds (user + system) of the client (this process), the server, and the
    database: PostgreSQL's processes, each counted from when it was first seen (a backend
    started during the import counts from zero)."""

    def __init__(self, server: psutil.Process, postmaster: psutil.Process | None) -> None:
        self.server, self.postmaster = server, postmaster
        self.client0, self.server0 = _seconds(psutil.Process()), _seconds(server)
        self.db0 = self._cluster()

    def _cluster(self) -> dict[int, float]:
        if self.postmaster is None:
            return {}
        processes = [self.postmaster, *self.postmaster.children()]
        return {p.pid: _seconds(p) for p in processes}

    def spent(self) -> tuple[float, float, float]:
        db = sum(t - self.db0.get(pid, 0.0) for pid, t in self._cluster().items())
        client = _seconds(psutil.Process()) - self.client0
        return client, _seconds(self.server) - self.server0, db


def measure(url: str, data: Path, n: int, tmp: Path) -> dict[str, float]:
    upgrade(url)
    token = create_token(name=f"bench-{time.time_ns()}", role="admin", database_url=url)
    port = free_port()
    proc = serve(url, port, tmp / "api.log")
    figures: dict[str, float] = {"records": float(n)}
    server = psutil.Process(proc.pid)
    postmaster = _postmaster(url)
    try:
        for label, expect in (("import", "created"), ("reimport", "existing")):
            # A new client per import, as a new `backfill media import` would be: its batch
            # keys are its own, so the re-import is answered by the database, not replayed.
            cpu = _Cpu(server, postmaster)
            start = time.perf_counter()
            with (
                BackfillClient(f"http://127.0.0.1:{port}", token) as client,
                data.open("rb") as lines,
            ):
                report = import_media(client, lines)
            elapsed = time.perf_counter() - start
            client_cpu, server_cpu, db_cpu = cpu.spent()
            assert getattr(report, expect) == n, report
            # CPU per 1,000 records (a batch): what bounds the rate on a loaded machine.
            figures[f"{label}_client_cpu_ms_per_1000"] = client_cpu / n * 1e6
            figures[f"{label}_server_cpu_ms_per_1000"] = server_cpu / n * 1e6
            figures[f"{label}_database_cpu_ms_per_1000"] = db_cpu / n * 1e6
            figures[f"{label}_records_per_s"] = n / elapsed
            figures[f"{label}_s"] = elapsed
    finally:
        proc.terminate()
        proc.wait(10)
    return figures


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)

    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = tmp / "records.ndjson"
        write_ndjson(data, args.records)
        if args.backend in ("sqlite", "both"):
            results["sqlite"] = measure(f"sqlite:///{tmp}/import.db", data, args.records, tmp)
        if args.backend in ("postgresql", "both"):
            try:
                with postgres() as (url, _origin):
                    results["postgresql"] = measure(url, data, args.records, tmp)
            except Unavailable as exc:
                print(f"postgresql: skipped ({exc})")
    for backend, f in results.items():
        if args.json:
            print(json.dumps({"backend": backend, **f}))
        else:
            print(
                f"{backend}: {args.records:,} records: import {f['import_records_per_s']:,.0f} "
                f"records/s ({f['import_s']:.1f} s), re-import "
                f"{f['reimport_records_per_s']:,.0f} records/s ({f['reimport_s']:.1f} s); "
                f"CPU per 1,000 records: client {f['import_client_cpu_ms_per_1000']:.0f} ms, "
                f"server {f['import_server_cpu_ms_per_1000']:.0f} ms"
                + (
                    f", PostgreSQL {f['import_database_cpu_ms_per_1000']:.0f} ms"
                    if backend == "postgresql"
                    else " (SQLite's share included)"
                )
                + f"; re-import: server {f['reimport_server_cpu_ms_per_1000']:.0f} ms"
                + (
                    f", PostgreSQL {f['reimport_database_cpu_ms_per_1000']:.0f} ms"
                    if backend == "postgresql"
                    else ""
                )
            )
    return results


if __name__ == "__main__":
    main()
