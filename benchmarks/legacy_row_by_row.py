"""The old architecture vs the API path: the same duration updates, same database, one run.

    uv run python -m benchmarks.legacy_row_by_row                  # 20,000 rows, temp SQLite
    uv run python -m benchmarks.legacy_row_by_row --rows 2000 --database-url postgresql+psycopg://...

The legacy way (`legacy_update`): a script holding database credentials opens an ORM session,
and for each record loads the `Media` row, sets the field, bumps the revision and commits,
one transaction per row, as the pre-API backfill scripts did. The API way (`api_update`): the
same values sent as batches through `flows.client.BackfillClient.post_results` to a real API
(uvicorn on 127.0.0.1) over the same database, validated, audited and idempotent.

Both run on the same records, on the same engine settings (`api.core.db.make_engine`: on
SQLite, WAL with synchronous=NORMAL, so the legacy script gets no fsync per commit either),
API first after a warm-up batch. Prints rows/s of each and the ratio; target API >= 5x legacy.
The database must be disposable: it is migrated and its media table emptied.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from sqlmodel import Session

from api.core.db import make_engine
from api.migrate import upgrade
from api.models import Media, utcnow
from api.schemas import BackfillKind, DurationResult
from api.services.tokens import create_token
from benchmarks.api_apply import seed, serve
from benchmarks.hashing import free_port
from flows.client import BackfillClient


def legacy_update(url: str, updates: Iterable[tuple[int, float]]) -> int:
    """The legacy script: load, set, commit, one row at a time. Returns the rows updated."""
    engine = make_engine(url)
    count = 0
    try:
        with Session(engine) as session:
            for record_id, duration in updates:
                media = session.get(Media, record_id)
                if media is None:
                    continue
                media.duration = duration
                media.revision += 1
                media.updated_at = utcnow()
                session.add(media)
                session.commit()
                count += 1
    finally:
        engine.dispose()
    return count


def api_update(base: str, token: str, updates: Sequence[tuple[int, float]], batch: int) -> int:
    """The API path: batches of validated results through the flows' client."""
    applied = 0
    with BackfillClient(base, token) as client:
        for k in range(0, len(updates), batch):
            items = [DurationResult(record_id=i, duration=d) for i, d in updates[k : k + batch]]
            result = client.post_results(BackfillKind.MEDIA_DURATION, items)
            assert not result.rejected, result.rejected[:3]
            applied += result.applied
    return applied


def compare(url: str | None = None, rows: int = 20_000, batch: int = 500) -> dict[str, float]:
    """rows/s of the legacy script and of the API path over the same `rows` records."""
    with tempfile.TemporaryDirectory() as tmp:
        url = url or f"sqlite:///{tmp}/bench.db"
        upgrade(url)
        token = create_token(name=f"bench-{time.time_ns()}", role="admin", database_url=url)
        ids = seed(url, rows)
        port = free_port()
        proc = serve(url, port, Path(tmp) / "api.log")
        base = f"http://127.0.0.1:{port}"
        try:
            api_update(base, token, [(i, 0.5) for i in ids[:batch]], batch)  # warm-up
            started = time.perf_counter()
            applied = api_update(base, token, [(i, 1.0) for i in ids], batch)
            api_s = time.perf_counter() - started
        finally:
            proc.terminate()
            proc.wait(10)
        assert applied == rows, (applied, rows)
        started = time.perf_counter()
        updated = legacy_update(url, [(i, 2.0) for i in ids])
        legacy_s = time.perf_counter() - started
        assert updated == rows, (updated, rows)
    return {
        "rows": float(rows),
        "batch": float(batch),
        "api_rows_per_s": rows / api_s,
        "legacy_rows_per_s": rows / legacy_s,
        "ratio": legacy_s / api_s,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="default: a SQLite file in a temp dir")
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500, help="Items per API batch.")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)

    figures = compare(args.database_url, args.rows, args.batch)
    backend = (args.database_url or "sqlite").split(":", 1)[0]
    if args.json:
        print(json.dumps({"backend": backend, **figures}))
    else:
        legacy, api = figures["legacy_rows_per_s"], figures["api_rows_per_s"]
        print(
            f"{backend}: {args.rows:,} duration updates\n"
            f"  legacy (ORM session, commit per row): {legacy:>10,.0f} rows/s\n"
            f"  API (BackfillClient, batches of {args.batch:>4}): {api:>10,.0f} rows/s\n"
            f"  ratio API/legacy:                     {figures['ratio']:>10.2f}x  (target >= 5x)"
        )
    return figures


if __name__ == "__main__":
    main()
