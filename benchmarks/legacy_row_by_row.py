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

import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from sqlmodel import Session

from api.core.db import make_engine
from api.models import Media, utcnow
from api.schemas import BackfillKind, DurationResult
from benchmarks.api_apply import database_main, seeded, serving
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


SUMMARY = (
    "{backend}: {rows:,} duration updates\n"
    "  legacy (ORM session, commit per row): {legacy_rows_per_s:>10,.0f} rows/s\n"
    "  API (BackfillClient, batches of {batch:>4}): {api_rows_per_s:>10,.0f} rows/s\n"
    "  ratio API/legacy:                     {ratio:>10.2f}x  (target >= 5x)"
)


def compare(url: str | None = None, rows: int = 20_000, batch: int = 500) -> dict[str, float]:
    """rows/s of the legacy script and of the API path over the same `rows` records."""
    with tempfile.TemporaryDirectory() as tmp:
        url, token, ids = seeded(url, rows, Path(tmp))
        with serving(url, Path(tmp) / "api.log") as base:
            api_update(base, token, [(i, 0.5) for i in ids[:batch]], batch)  # warm-up
            started = time.perf_counter()
            applied = api_update(base, token, [(i, 1.0) for i in ids], batch)
            api_s = time.perf_counter() - started
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
    return database_main(argv, __doc__.split("\n\n")[0], 20_000, 500, compare, SUMMARY)


if __name__ == "__main__":
    main()
