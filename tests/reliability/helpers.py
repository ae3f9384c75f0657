"""Helpers of the reliability suite: read the database directly, make and register files,
check hashes against hashlib."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import NullPool

from flows.client import BackfillClient
from tests.conftest import LiveApi

#: How often a client retries a failed call in these tests (backoff 0.5 s doubling to 10 s:
#: about 45 s in all, far more than an API restart takes; the outage test sets none).
MAX_RETRIES = 8


class Db:
    """Read the API's database directly (no write lock, no pool): the ground truth."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = create_engine(url, poolclass=NullPool)

    def rows(self, sql: str, **params: Any) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(text(sql), params).all())

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(text(sql), params).scalar()

    def applied(self, kind: str) -> int:
        """Records written by the committed, non-dry-run batches of `kind` (the audit)."""
        return int(
            self.scalar(
                "SELECT COALESCE(SUM(applied), 0) FROM audit WHERE kind = :kind AND NOT dry_run",
                kind=kind,
            )
        )

    def media(self) -> list[Any]:
        return self.rows(
            "SELECT id, uri, sha256 AS hash, "
            "CASE WHEN sha256 IS NOT NULL THEN 'sha256' END AS hash_algorithm, "
            "duration, revision, schema_version, media_type, size_bytes, sample_rate, channels "
            "FROM media ORDER BY id"
        )

    def dispose(self) -> None:
        self.engine.dispose()


def admin_client(api: LiveApi, **kwargs: Any) -> BackfillClient:
    return BackfillClient(api.url, api.admin_token, **kwargs)


def small_files(root: Path, count: int, *, folder: str = "blobs") -> list[Path]:
    """`count` files of random bytes, 1 to 4 KiB each (a few empty ones first)."""
    paths = []
    sizes = os.urandom(count)
    for i in range(count):
        path = root / folder / f"{i // 500:02d}" / f"{i:05d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(0 if i < 3 else 1024 + 12 * sizes[i]))
        paths.append(path)
    return paths


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_hashed_once(db: Db, root: Path, expected_records: int) -> None:
    """Every record holds hashlib's sha256 of its file, written exactly once."""
    rows = db.media()
    assert len(rows) == expected_records
    wrong = [r.uri for r in rows if r.hash != sha256_of(root / r.uri)]
    assert not wrong, f"{len(wrong)} records hold a wrong hash, e.g. {wrong[:3]}"
    assert {r.hash_algorithm for r in rows} == {"sha256"}
    # Registered at revision 1; one applied write each: revision 2, nothing more.
    revisions = {r.revision for r in rows}
    assert revisions == {2}, f"revisions seen: {sorted(revisions)}"
    # The audit: applied counts of the committed batches add up to one per record, and
    # every batch was keyed (a replay is answered from the key, never applied again).
    assert db.applied("file-hashing") == expected_records
    keys = db.rows("SELECT idempotency_key FROM audit WHERE kind = 'file-hashing' AND NOT dry_run")
    assert all(k for (k,) in keys) and len({k for (k,) in keys}) == len(keys)
