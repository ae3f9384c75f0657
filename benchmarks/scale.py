"""Per-record cost from 10k to 1M records, 99 % done: a page of pending work, a batch write,
coverage, and `backfill status`, on SQLite and PostgreSQL.

    uv run python -m benchmarks.scale                          # 10k and 1M, both backends
    uv run python -m benchmarks.scale --sizes 10000 100000 --backend sqlite

Setup is direct SQL (setup only, not what is measured): a fresh migrated database gets N
records in one INSERT ... SELECT (the `media_counts` triggers fire as for any write), 1 % of
them still to do for each media kind (and 1 % legacy for version-0), then ANALYZE. Then a real
uvicorn serves it and an httpx client times, as a flow sees them:

  page      GET /backfills/media-duration/pending?limit=100 (first page), and 50 from the middle
  write     POST /backfills/media-duration, 1,000 records given a new duration (all applied):
            every 10th record of 10,000 (the whole table at 10k, the middle at 1M)
  coverage  GET /backfills
  status    the `backfill status` command, wall time of the whole process (the venv's
            script, and `uv run backfill status`)
  API RSS   the API process's resident memory after all of it

Each figure is the median of several runs (ms; status in s); the ratio is largest/smallest
size. PostgreSQL is a throwaway cluster (`benchmarks.pg`) unless BACKFILL_BENCH_PG_URL is set.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
from sqlalchemy import DateTime, bindparam, text

from api.core.db import make_engine
from api.migrate import upgrade
from api.models import utcnow
from api.services.tokens import create_token
from benchmarks.api_apply import serve
from benchmarks.hashing import ROOT, free_port
from benchmarks.pg import Unavailable, postgres

#: Every record but these is done for every media kind; `% 100 == 50` is a legacy record.
FILL = """
INSERT INTO media (uri, uri_key, media_type, size_bytes, duration, duration_version, sha256,
                   sha256_version, snr, frequency, snr_version, sample_rate, channels,
                   schema_version, revision, created_at, updated_at)
SELECT 'scale/' || i || '.wav', {key}, 'audio', 1000 + i,
       CASE WHEN i % 100 IN (0, 50) THEN NULL ELSE 1.0 END,
       CASE WHEN i % 100 IN (0, 50) THEN NULL ELSE 1 END,
       CASE WHEN i % 100 IN (0, 50) THEN NULL ELSE '{hash}' END,
       CASE WHEN i % 100 IN (0, 50) THEN NULL ELSE 1 END,
       CASE WHEN i % 100 IN (0, 50) THEN NULL ELSE 10.0 END,
       CASE WHEN i % 100 IN (0, 50) THEN NULL ELSE 440.0 END,
       CASE WHEN i % 100 IN (0, 50) THEN NULL ELSE 1 END,
       44100, 1, CASE WHEN i % 100 = 50 THEN 0 ELSE 1 END, 1, :now, :now
FROM {series}
"""


def build(url: str, n: int) -> float:
    """Migrate and fill; returns the seconds it took."""
    start = time.perf_counter()
    upgrade(url)
    engine = make_engine(url)
    if engine.dialect.name == "postgresql":
        sql = FILL.format(
            key="lpad(to_hex(i), 64, '0')", hash="ab" * 32, series="generate_series(1, :n) AS i"
        )
    else:
        sql = (
            "WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < :n) "
            + FILL.format(key="printf('%064x', i)", hash="ab" * 32, series="seq")
        )
    stmt = text(sql).bindparams(bindparam("now", type_=DateTime(timezone=True)))
    with engine.begin() as conn:
        conn.execute(stmt, {"n": n, "now": utcnow()})
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("ANALYZE")
    engine.dispose()
    return time.perf_counter() - start


def median_ms(call: Callable[[int], None], runs: int) -> float:
    call(-1)  # warm
    times = []
    for k in range(runs):
        start = time.perf_counter()
        call(k)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def status_seconds(base: str, token: str, runs: int = 3, *, uv: bool = False) -> float:
    """Median wall seconds of `backfill status` (the venv's script; `uv run backfill status`
    with `uv`, which adds uv's own start-up and its check that the venv is in sync)."""
    exe = [str(Path(sys.executable).parent / "backfill")]
    if uv:
        exe = ["uv", "run", "--frozen", "backfill"]
    env = os.environ | {"BACKFILL_API_URL": base, "BACKFILL_API_TOKEN": token}
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([*exe, "status"], env=env, check=True, capture_output=True, cwd=ROOT)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(url: str, n: int, tmp: Path, runs: int) -> dict[str, float]:
    built = build(url, n)
    token = create_token(name=f"bench-{time.time_ns()}", role="admin", database_url=url)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = serve(url, port, tmp / f"api-{n}.log")
    try:
        with httpx.Client(
            base_url=f"{base}/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=300
        ) as c:
            pending = "/backfills/media-duration/pending"

            # Pages of the same size at every scale: 100 (10k records have 100 to do).
            def page(_k: int) -> None:
                r = c.get(pending, params={"limit": 100})
                r.raise_for_status()
                assert len(r.json()["items"]) == 100

            def page_mid(_k: int) -> None:
                r = c.get(pending, params={"limit": 50, "after_id": n // 2})
                r.raise_for_status()
                assert len(r.json()["items"]) == 50

            # 1,000 done records, every 10th of a window of 10,000 (the whole table at 10k): the
            # same pages touched at every size, so only the size of the table differs. Spread
            # over the whole table instead, a batch dirties a page per record at 1M.
            first = 1 if n <= 10_000 else n // 2 + 1
            batch = list(range(first, first + 10_000, 10))
            assert all(i % 100 not in (0, 50) for i in batch) and batch[-1] <= n

            def write(k: int) -> None:
                items = [{"record_id": r, "duration": 3.0 + k} for r in batch]
                r = c.post("/backfills/media-duration", json={"items": items})
                r.raise_for_status()
                assert r.json()["applied"] == len(batch), r.text

            def cover(_k: int) -> None:
                r = c.get("/backfills")
                r.raise_for_status()
                kinds = {k["kind"]: k for k in r.json()["kinds"]}
                assert kinds["media-duration"]["pending"] == n // 100

            figures = {
                "records": float(n),
                "build_s": built,
                "page_ms": median_ms(page, runs),
                "page_mid_ms": median_ms(page_mid, runs),
                "write_ms": median_ms(write, runs),
                "coverage_ms": median_ms(cover, runs),
            }
        figures["status_s"] = status_seconds(base, token)
        figures["status_uv_s"] = status_seconds(base, token, uv=True)
        figures["api_rss_mib"] = psutil.Process(proc.pid).memory_info().rss / 2**20
    finally:
        proc.terminate()
        proc.wait(10)
    return figures


def run(
    backend: str, url_for: Callable[[int], str], sizes: list[int], tmp: Path, runs: int
) -> list[dict[str, float]]:
    rows = []
    for n in sizes:
        figures = measure(url_for(n), n, tmp, runs)
        rows.append(figures)
        print(
            f"{backend:<10} {n:>9,}  page {figures['page_ms']:7.1f} ms  "
            f"page@mid {figures['page_mid_ms']:7.1f} ms  write {figures['write_ms']:7.1f} ms  "
            f"coverage {figures['coverage_ms']:6.1f} ms  status {figures['status_s']:.2f} s "
            f"(uv run {figures['status_uv_s']:.2f} s)  API RSS {figures['api_rss_mib']:.0f} MiB  "
            f"(built in {figures['build_s']:.0f} s)",
            flush=True,
        )
    if len(rows) > 1:
        ratios = {
            key: rows[-1][key] / rows[0][key]
            for key in ("page_ms", "page_mid_ms", "write_ms", "coverage_ms", "status_s")
        }
        print(
            f"{backend:<10} ratio {sizes[-1]:,}/{sizes[0]:,}: "
            + "  ".join(
                f"{k.removesuffix('_ms').removesuffix('_s')} {v:.2f}x" for k, v in ratios.items()
            ),
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> dict[str, list[dict[str, float]]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args(argv)

    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.backend in ("sqlite", "both"):
            results["sqlite"] = run(
                "sqlite", lambda n: f"sqlite:///{tmp}/scale-{n}.db", args.sizes, tmp, args.runs
            )
        if args.backend in ("postgresql", "both"):
            try:
                with postgres() as (server, _origin):
                    results["postgresql"] = run(
                        "postgresql", lambda n: _database(server, n), args.sizes, tmp, args.runs
                    )
            except Unavailable as exc:
                print(f"postgresql: skipped ({exc})")
    if args.json:
        print(json.dumps(results))
    return results


def _database(server: str, n: int) -> str:
    """A fresh database named for the size on the benchmark server."""
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(server)
    name = f"scale_{n}_{time.time_ns()}"
    admin = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return url.set(database=name).render_as_string(hide_password=False)


if __name__ == "__main__":
    main()
