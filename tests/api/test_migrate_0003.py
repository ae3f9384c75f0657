"""Migration 0003 on a database with data: the one hash moves to its algorithm's digest (version
1), stored values become version 1, the counters are made again, and a downgrade gives the
one hash back. On SQLite, and on PostgreSQL when BACKFILL_TEST_DATABASE_URL is set."""

from __future__ import annotations

from alembic import command
from sqlalchemy import Engine, text
from sqlmodel import Session

from api.core.db import make_engine
from api.migrate import alembic_config, upgrade
from api.models import uri_key
from api.schemas import BackfillKind, HashAlgorithm, PendingFilter
from api.services.work import coverage, scan_coverage
from tests.services.utils import pending_ids

SHA = "ab" * 32
MD5 = "cd" * 16


def seed_0002(engine: Engine) -> dict[str, int]:
    """Records as 0002 stored them: a sha256 hash, an md5 hash, none, a legacy one."""
    rows = {
        "sha": {"hash": SHA, "hash_algorithm": "sha256", "duration": 1.5, "snr": 9.0},
        "md5": {"hash": MD5, "hash_algorithm": "md5"},
        "none": {},
        "legacy": {"schema_version": 0},
    }
    ids = {}
    with engine.begin() as conn:
        for name, values in rows.items():
            fields = {
                "uri": f"{name}.wav",
                "uri_key": uri_key(f"{name}.wav"),
                "media_type": "audio",
                "schema_version": 1,
                "revision": 1,
                "frequency": 440.0 if name == "sha" else None,
                "created_at": "2026-11-01 00:00:00",
                "updated_at": "2026-11-01 00:00:00",
                **values,
            }
            columns = ", ".join(fields)
            marks = ", ".join(f":{c}" for c in fields)
            ids[name] = conn.execute(
                text(f"INSERT INTO media ({columns}) VALUES ({marks}) RETURNING id"), fields
            ).scalar_one()
    return ids


def pending(engine: Engine, algorithm: HashAlgorithm) -> list[int]:
    with Session(engine) as session:
        return pending_ids(session, BackfillKind.FILE_HASHING, PendingFilter(algorithm=algorithm))


def test_upgrade_from_0002_keeps_the_data_and_downgrade_gives_it_back(url: str) -> None:
    upgrade(url, "0002")
    engine = make_engine(url, pool_size=1)
    try:
        ids = seed_0002(engine)
        assert upgrade(url, "0003").after == "0003"

        with engine.connect() as conn:
            got = {
                row.id: row
                for row in conn.execute(
                    text(
                        "SELECT id, sha256, sha256_version, md5, md5_version, blake2b, "
                        "duration_version, snr_version FROM media"
                    )
                )
            }
        sha, md5, none = got[ids["sha"]], got[ids["md5"]], got[ids["none"]]
        assert (sha.sha256, sha.sha256_version, sha.md5, sha.blake2b) == (SHA, 1, None, None)
        assert (sha.duration_version, sha.snr_version) == (1, 1)
        assert (md5.md5, md5.md5_version, md5.sha256) == (MD5, 1, None)
        assert (none.sha256, none.md5, none.duration_version) == (None, None, None)

        assert pending(engine, HashAlgorithm.SHA256) == [ids["md5"], ids["none"]]
        assert pending(engine, HashAlgorithm.MD5) == [ids["sha"], ids["none"]]
        with Session(engine) as session:
            counted = coverage(session=session, max_attempts=3, lease_seconds=60)
            by_kind = {(k.kind, k.algorithm): k for k in counted.kinds}
            for (kind, algorithm), found in by_kind.items():
                assert found == scan_coverage(session, kind, 3, 60, algorithm)
        hashing = by_kind[BackfillKind.FILE_HASHING, HashAlgorithm.SHA256]
        assert (hashing.total, hashing.done, hashing.versions) == (3, 1, {1: 1})
        assert by_kind[BackfillKind.FILE_HASHING, HashAlgorithm.MD5].done == 1
        assert by_kind[BackfillKind.MEDIA_DURATION, None].versions == {1: 1}

        engine.dispose()
        command.downgrade(alembic_config(url), "0002")
        with engine.connect() as conn:
            back = dict(conn.execute(text("SELECT id, hash_algorithm FROM media")).tuples().all())
            todo = conn.execute(text("SELECT SUM(hash_todo) FROM media_counts")).scalar_one()
        assert back == {
            ids["sha"]: "sha256",
            ids["md5"]: "md5",
            ids["none"]: None,
            ids["legacy"]: None,
        }
        assert todo == 2
        engine.dispose()
        assert upgrade(url, "0003").after == "0003"  # and up again
    finally:
        engine.dispose()
