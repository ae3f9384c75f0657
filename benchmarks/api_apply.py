"""API batch apply vs direct executemany into the same database, in one run.

    uv run python -m benchmarks.api_apply                       # SQLite file in a temp dir
    uv run python -m benchmarks.api_apply --database-url postgresql+psycopg://u@127.0.0.1:5432/db

Applies N duration updates through the API (real uvicorn on 127.0.0.1, keep-alive httpx,
batches of 1,000), then the same number straight into the database with one executemany
UPDATE and one commit per batch (what a script holding DB credentials would do), then with the
driver's own executemany (sqlite3, psycopg: no SQLAlchemy, the honest floor), and prints
rows/s for each and the ratios. The database must be empty or disposable: it is migrated and
filled here.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import bindparam, insert, text

from api.cli import uvicorn_command
from api.core.db import make_engine
from api.migrate import upgrade
from api.models import MEDIA, uri_key, utcnow
from api.services.tokens import create_token
from benchmarks.hashing import free_port

ROOT = Path(__file__).resolve().parents[1]


def seed(url: str, n: int) -> list[int]:
    engine = make_engine(url)
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM media"))
        conn.execute(
            insert(MEDIA),
            [
                {
                    "uri": f"bench/{i}.wav",
                    "uri_key": uri_key(f"bench/{i}.wav"),
                    "media_type": "audio",
                    "schema_version": 1,
                    "revision": 1,
                    "created_at": now,
                    "updated_at": now,
                }
                for i in range(n)
            ],
        )
        ids = [row[0] for row in conn.execute(text("SELECT id FROM media ORDER BY id"))]
    engine.dispose()
    return ids


def serve(url: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = os.environ | {"BACKFILL_DATABASE_URL": url}
    proc = subprocess.Popen(
        uvicorn_command(port, "--no-access-log", "--log-level", "warning"),
        cwd=ROOT,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/v1/health").status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"API did not start; see {log}")


@contextmanager
def serving(url: str, log: Path) -> Iterator[str]:
    """The API over `url` on a free port, for the block: its base URL."""
    port = free_port()
    proc = serve(url, port, log)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def seeded(url: str | None, rows: int, tmp: Path) -> tuple[str, str, list[int]]:
    """(database URL, admin token, media ids): the database at `url` (default: a SQLite file
    in `tmp`) migrated, emptied and seeded with `rows` media records."""
    url = url or f"sqlite:///{tmp}/bench.db"
    upgrade(url)
    token = create_token(name=f"bench-{time.time_ns()}", role="admin", database_url=url)
    return url, token, seed(url, rows)


def via_api(base: str, token: str, ids: list[int], batch: int, value: float) -> float:
    with httpx.Client(
        base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=120
    ) as client:
        start = time.perf_counter()
        for k in range(0, len(ids), batch):
            body = {"items": [{"record_id": i, "duration": value} for i in ids[k : k + batch]]}
            r = client.post("/api/v1/backfills/media-duration", json=body)
            r.raise_for_status()
            assert r.json()["applied"] == len(body["items"]), r.text
        return time.perf_counter() - start


def direct(url: str, ids: list[int], batch: int, value: float) -> float:
    engine = make_engine(url)
    stmt = (
        MEDIA.update()
        .where(MEDIA.c.id == bindparam("b_id"))
        .values(duration=bindparam("b_duration"), revision=MEDIA.c.revision + 1)
    )
    start = time.perf_counter()
    for k in range(0, len(ids), batch):
        with engine.begin() as conn:
            conn.execute(stmt, [{"b_id": i, "b_duration": value} for i in ids[k : k + batch]])
    elapsed = time.perf_counter() - start
    engine.dispose()
    return elapsed


def driver(url: str, ids: list[int], batch: int, value: float) -> float:
    """The floor: the driver's own executemany (sqlite3 or psycopg), no SQLAlchemy, one
    UPDATE statement per batch and one commit, as the leanest script would write it."""
    sql = "UPDATE media SET duration = {m}, revision = revision + 1 WHERE id = {m}"
    if url.startswith("sqlite"):
        import sqlite3

        conn: Any = sqlite3.connect(url.removeprefix("sqlite:///"))
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # as the API's engine sets it
        sql = sql.format(m="?")
    else:
        import psycopg
        from sqlalchemy.engine import make_url

        plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        conn = psycopg.connect(plain)
        sql = sql.format(m="%s")
    start = time.perf_counter()
    for k in range(0, len(ids), batch):
        cursor = conn.cursor()
        cursor.executemany(sql, [(value, i) for i in ids[k : k + batch]])
        cursor.close()
        conn.commit()
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed


SUMMARY = (
    "{backend}: {rows:,} duration updates in batches of {batch}\n"
    "  API (HTTP, validated, audited):  {api_rows_per_s:>10,.0f} rows/s\n"
    "  direct executemany:              {direct_rows_per_s:>10,.0f} rows/s\n"
    "  driver executemany:              {driver_rows_per_s:>10,.0f} rows/s\n"
    "  ratio API/direct:                {ratio:>10.2f}x  (target >= 0.5x)\n"
    "  ratio API/driver:                {driver_ratio:>10.2f}x"
)


def measure(url: str | None = None, rows: int = 100_000, batch: int = 1000) -> dict[str, float]:
    """rows/s through the API and straight into the database at `url` (default: a temp SQLite
    file), and their ratio. The database is migrated and its media table emptied."""
    with tempfile.TemporaryDirectory() as tmp:
        url, token, ids = seeded(url, rows, Path(tmp))
        with serving(url, Path(tmp) / "api.log") as base:
            via_api(base, token, ids[:batch], batch, 0.5)  # warm
            api_s = via_api(base, token, ids, batch, 1.0)
        direct_s = direct(url, ids, batch, 2.0)
        driver_s = driver(url, ids, batch, 3.0)
    return {
        "rows": float(rows),
        "batch": float(batch),
        "api_rows_per_s": rows / api_s,
        "direct_rows_per_s": rows / direct_s,
        "driver_rows_per_s": rows / driver_s,
        "ratio": direct_s / api_s,
        "driver_ratio": driver_s / api_s,
    }


def database_main(
    argv: Sequence[str] | None,
    description: str,
    rows: int,
    batch: int,
    run: Callable[[str | None, int, int], dict[str, float]],
    summary: str,
) -> dict[str, float]:
    """The command line of a benchmark over one database: `run(url, rows, batch)`, then its
    figures as JSON or through the format string `summary` (which may name them, and
    backend, rows and batch)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--database-url", help="default: a SQLite file in a temp dir")
    parser.add_argument("--rows", type=int, default=rows)
    parser.add_argument("--batch", type=int, default=batch, help="Items per API batch.")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)

    figures = run(args.database_url, args.rows, args.batch)
    backend = (args.database_url or "sqlite").split(":", 1)[0]
    if args.json:
        print(json.dumps({"backend": backend, **figures}))
    else:
        print(
            summary.format_map(
                figures | {"backend": backend, "rows": args.rows, "batch": args.batch}
            )
        )
    return figures


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    return database_main(argv, __doc__.splitlines()[0], 100_000, 1000, measure, SUMMARY)


if __name__ == "__main__":
    main()
