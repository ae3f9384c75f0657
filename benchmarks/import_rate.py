"""Bulk import rate: N records of NDJSON through `backfill media import`'s code path.

    uv run python -m benchmarks.import_rate                    # SQLite and PostgreSQL, 100k
    uv run python -m benchmarks.import_rate --records 1000000 --backend sqlite

Writes N `MediaIn` lines to a file, serves a fresh migrated database with uvicorn on
127.0.0.1, imports the file with `ops.importer.import_media` (the command's engine: batches
of 1,000, two in flight, an Idempotency-Key per batch) and prints records/s; then imports it
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


def _cpu(server: psutil.Process) -> tuple[float, float]:
    """CPU seconds (user + system) so far of this process (the client) and the server."""
    mine, theirs = psutil.Process().cpu_times(), server.cpu_times()
    return mine.user + mine.system, theirs.user + theirs.system


def measure(url: str, data: Path, n: int, tmp: Path) -> dict[str, float]:
    upgrade(url)
    token = create_token(name=f"bench-{time.time_ns()}", role="admin", database_url=url)
    port = free_port()
    proc = serve(url, port, tmp / "api.log")
    figures: dict[str, float] = {"records": float(n)}
    server = psutil.Process(proc.pid)
    try:
        for label, expect in (("import", "created"), ("reimport", "existing")):
            # A new client per import, as a new `backfill media import` would be: its batch
            # keys are its own, so the re-import is answered by the database, not replayed.
            cpu = _cpu(server)
            start = time.perf_counter()
            with (
                BackfillClient(f"http://127.0.0.1:{port}", token) as client,
                data.open("rb") as lines,
            ):
                report = import_media(client, lines)
            elapsed = time.perf_counter() - start
            client_cpu, server_cpu = (b - a for a, b in zip(cpu, _cpu(server), strict=True))
            assert getattr(report, expect) == n, report
            # CPU per 1,000 records (a batch): what bounds the rate on a loaded machine.
            figures[f"{label}_client_cpu_ms_per_1000"] = client_cpu / n * 1e6
            figures[f"{label}_server_cpu_ms_per_1000"] = server_cpu / n * 1e6
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
            )
    return results


if __name__ == "__main__":
    main()
