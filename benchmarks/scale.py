"""Per-record cost from 10k to 1M records, 99 % done: a page of pending work, a batch write,
coverage, and `backfill status`, on SQLite and PostgreSQL.

    uv run python -m benchmarks.scale                          # 10k and 1M, both backends
    uv run python -m benchmarks.scale --sizes 10000 100000 --backend sqlite

Setup is direct SQL (setup only, not what is measured): a fresh migrated database gets N
records in one INSERT ... SELECT (the `media_counts` triggers fire as for any write), 1 % of
them still to do for each media kind (and 1 % legacy for version-0), then ANALYZE. Then a real
uvicorn serves each size, all of them at once, and an httpx client times, as a flow sees them:

  page      GET /backfills/media-duration/pending?limit=100 (first page), and 50 from the middle
  write     POST /backfills/media-duration, 1,000 records given a new duration (all applied):
            every 10th record of 10,000 (the whole table at 10k, the middle at 1M)
  coverage  GET /backfills
  status    the `backfill status` command, wall and CPU time of the whole process (the venv's
            script, and `uv run backfill status`), after a first run that leaves the project's
            bytecode cached (PYTHONDONTWRITEBYTECODE is dropped for it), as an operator's
            second call finds it
  API RSS   the API process's resident memory after all of it

Each figure is the median of several runs (ms; status in s), taken in turns: run k at every
size, then run k + 1, so the load of a shared machine falls on every size alike; the ratio is
largest/smallest size, and the load average is printed beside it. PostgreSQL is a throwaway
cluster (`benchmarks.pg`) unless BACKFILL_BENCH_PG_URL is set.
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


def _median_ms(times: list[float]) -> float:
    return 1000 * statistics.median(times)


def status_once(base: str, token: str, *, uv: bool = False) -> tuple[float, float]:
    """Wall and CPU seconds (user + system, the process and its children) of one `backfill
    status`: the venv's script, or `uv run backfill status` with `uv` (which adds uv's own
    start-up and its check that the venv is in sync)."""
    exe = [str(Path(sys.executable).parent / "backfill")]
    if uv:
        exe = ["uv", "run", "--frozen", "backfill"]
    env = os.environ | {"BACKFILL_API_URL": base, "BACKFILL_API_TOKEN": token}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    start = time.perf_counter()
    proc = subprocess.Popen(
        [*exe, "status"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, code, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    assert proc.stderr is not None
    errors = proc.stderr.read().decode()
    proc.stderr.close()
    if code:
        raise RuntimeError(f"backfill status failed: {errors}")
    return wall, usage.ru_utime + usage.ru_stime


class Target:
    """One size: its database, its API and the requests the benchmark makes of it."""

    def __init__(self, url: str, n: int, tmp: Path) -> None:
        self.n = n
        self.built = build(url, n)
        self.token = create_token(name=f"bench-{time.time_ns()}", role="admin", database_url=url)
        self.base = f"http://127.0.0.1:{free_port()}"
        self.proc = serve(url, int(self.base.rsplit(":", 1)[1]), tmp / f"api-{n}.log")
        self.client = httpx.Client(
            base_url=f"{self.base}/api/v1",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=300,
        )
        # 1,000 done records, every 10th of a window of 10,000 (the whole table at 10k): the
        # same pages touched at every size, so only the size of the table differs. Spread
        # over the whole table instead, a batch dirties a page per record at 1M.
        first = 1 if n <= 10_000 else n // 2 + 1
        self.batch = list(range(first, first + 10_000, 10))
        assert all(i % 100 not in (0, 50) for i in self.batch) and self.batch[-1] <= n
        self.writes = 0

    def page(self) -> None:
        """Pages of the same size at every scale: 100 (10k records have 100 to do)."""
        r = self.client.get(PENDING, params={"limit": 100})
        r.raise_for_status()
        assert len(r.json()["items"]) == 100

    def page_mid(self) -> None:
        r = self.client.get(PENDING, params={"limit": 50, "after_id": self.n // 2})
        r.raise_for_status()
        assert len(r.json()["items"]) == 50

    def write(self) -> None:
        """A new duration for each record of the batch, so every write applies all of them."""
        self.writes += 1
        items = [{"record_id": r, "duration": 3.0 + self.writes} for r in self.batch]
        r = self.client.post("/backfills/media-duration", json={"items": items})
        r.raise_for_status()
        assert r.json()["applied"] == len(self.batch), r.text

    def cover(self) -> None:
        r = self.client.get("/backfills")
        r.raise_for_status()
        kinds = {k["kind"]: k for k in r.json()["kinds"]}
        assert kinds["media-duration"]["pending"] == self.n // 100

    def close(self) -> float:
        """Stop the API; returns its resident memory (MiB) before it stopped."""
        self.client.close()
        try:
            return float(psutil.Process(self.proc.pid).memory_info().rss / 2**20)
        finally:
            self.proc.terminate()
            self.proc.wait(10)


PENDING = "/backfills/media-duration/pending"
#: The request costs, in the order measured, and the method of `Target` that makes each.
REQUESTS = {
    "page_ms": "page",
    "page_mid_ms": "page_mid",
    "write_ms": "write",
    "coverage_ms": "cover",
}


def _turn(targets: list[Target], k: int) -> list[tuple[int, Target]]:
    """The targets of turn `k`, in an order that alternates (small sizes first, then last), so
    going first or second in a turn weighs on every size alike."""
    order = list(enumerate(targets))
    return order if k % 2 == 0 else order[::-1]


def measure(targets: list[Target], runs: int, status_runs: int) -> list[dict[str, float]]:
    """The figures of each target, measured in turns: run k of a figure is taken at every
    size (in alternating order) before run k + 1, so a change of load on the machine falls on
    every size alike and the ratio between sizes stays honest where the absolute figures do
    not."""
    figures: list[dict[str, float]] = [
        {"records": float(t.n), "build_s": t.built, "load_before": os.getloadavg()[0]}
        for t in targets
    ]
    for key, method in REQUESTS.items():
        times: list[list[float]] = [[] for _ in targets]
        for t in targets:
            getattr(t, method)()  # warm
        for k in range(runs):
            for i, t in _turn(targets, k):
                start = time.perf_counter()
                getattr(t, method)()
                times[i].append(time.perf_counter() - start)
        for f, ts in zip(figures, times, strict=True):
            f[key] = _median_ms(ts)
    for key, uv, n_runs in (("status", False, status_runs), ("status_uv", True, 3)):
        samples: list[list[tuple[float, float]]] = [[] for _ in targets]
        for t in targets:
            status_once(t.base, t.token, uv=uv)  # warm: the OS caches the files it reads
        for k in range(n_runs):
            for i, t in _turn(targets, k):
                samples[i].append(status_once(t.base, t.token, uv=uv))
        for f, ss in zip(figures, samples, strict=True):
            f[f"{key}_s"] = statistics.median(w for w, _ in ss)
            f[f"{key}_cpu_s"] = statistics.median(c for _, c in ss)
    for f in figures:
        f["load_after"] = os.getloadavg()[0]
    return figures


def run(
    backend: str,
    url_for: Callable[[int], str],
    sizes: list[int],
    tmp: Path,
    runs: int,
    status_runs: int = 9,
) -> list[dict[str, float]]:
    """Build a database of each size, serve them all at once, measure them in turns."""
    targets: list[Target] = []
    try:
        for n in sizes:
            targets.append(Target(url_for(n), n, tmp))
        rows = measure(targets, runs, status_runs)
    finally:
        rss = [t.close() for t in targets]
    for figures, mib in zip(rows, rss, strict=True):
        figures["api_rss_mib"] = mib
        n = int(figures["records"])
        print(
            f"{backend:<10} {n:>9,}  page {figures['page_ms']:7.1f} ms  "
            f"page@mid {figures['page_mid_ms']:7.1f} ms  write {figures['write_ms']:7.1f} ms  "
            f"coverage {figures['coverage_ms']:6.1f} ms  status {figures['status_s']:.2f} s "
            f"(CPU {figures['status_cpu_s']:.2f} s; uv run {figures['status_uv_s']:.2f} s)  "
            f"API RSS {figures['api_rss_mib']:.0f} MiB  (built in {figures['build_s']:.0f} s)",
            flush=True,
        )
    if len(rows) > 1:
        ratios = {
            key: rows[-1][key] / rows[0][key] for key in (*REQUESTS, "status_s", "status_cpu_s")
        }
        print(
            f"{backend:<10} ratio {sizes[-1]:,}/{sizes[0]:,}: "
            + "  ".join(
                f"{k.removesuffix('_ms').removesuffix('_s')} {v:.2f}x" for k, v in ratios.items()
            )
            + f"  (load average {rows[0]['load_before']:.1f} -> {rows[0]['load_after']:.1f})",
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> dict[str, list[dict[str, float]]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--runs", type=int, default=31, help="runs per request figure")
    parser.add_argument("--status-runs", type=int, default=9, help="runs of `backfill status`")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args(argv)

    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.backend in ("sqlite", "both"):
            results["sqlite"] = run(
                "sqlite",
                lambda n: f"sqlite:///{tmp}/scale-{n}.db",
                args.sizes,
                tmp,
                args.runs,
                args.status_runs,
            )
        if args.backend in ("postgresql", "both"):
            try:
                with postgres() as (server, _origin):
                    results["postgresql"] = run(
                        "postgresql",
                        lambda n: _database(server, n),
                        args.sizes,
                        tmp,
                        args.runs,
                        args.status_runs,
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
