"""Migration 0005: the version indexes hold only the rows that have a version, the model
declares the indexes the migrations make, coverage and stale paging still read them, and a
downgrade gives the full indexes back. On SQLite, and on PostgreSQL when
BACKFILL_TEST_DATABASE_URL is set."""

from __future__ import annotations

from typing import Any

from alembic import command
from sqlalchemy import Engine, func, insert, inspect, select, text
from sqlmodel import Session

from api.core.db import make_engine
from api.migrate import alembic_config, upgrade
from api.models import MEDIA, VERSION_COLUMNS, uri_key, utcnow
from api.schemas import BackfillKind, PendingFilter, ReprocessMode
from api.services.work import PendingRequest, coverage, pending_query, scan_coverage


def media_indexes(engine: Engine) -> dict[str, tuple[list[str], str | None]]:
    """Each index of `media` in the database: its columns and its predicate (None: full);
    not the index of the unique uri_key constraint (PostgreSQL lists it)."""
    found = {}
    for index in inspect(engine).get_indexes("media"):
        if index.get("duplicates_constraint"):
            continue
        options = index.get("dialect_options", {})
        where = options.get("sqlite_where", options.get("postgresql_where"))
        found[index["name"]] = (index["column_names"], _plain(where))
    return found


def _plain(where: Any) -> str | None:
    """A predicate as text without the parentheses PostgreSQL adds."""
    return None if where is None else str(where).replace("(", "").replace(")", "")


def model_indexes() -> dict[str, tuple[list[str], str | None]]:
    found = {}
    for index in MEDIA.indexes:
        options = index.dialect_options
        where = options["sqlite"]["where"]
        assert _plain(where) == _plain(options["postgresql"]["where"])
        found[index.name] = ([c.name for c in index.columns], _plain(where))
    return found


def seed(engine: Engine) -> None:
    """2,000 records: one in ten with values of version 2, one in a hundred of those version 1."""
    now = utcnow()
    rows = []
    for i in range(2000):
        row: dict[str, Any] = {
            "uri": f"v/{i}.wav",
            "uri_key": uri_key(f"v/{i}.wav"),
            "media_type": "audio",
            "schema_version": 1,
            "revision": 1,
            "created_at": now,
            "updated_at": now,
            "duration": None,
            "duration_version": None,
        }
        if i % 10 == 0:
            row |= {"duration": 1.0, "duration_version": 1 if i % 100 == 0 else 2}
        rows.append(row)
    with engine.begin() as conn:
        conn.execute(insert(MEDIA), rows)
        conn.execute(text("ANALYZE"))


def plan_of(session: Session, stmt: Any) -> str:
    dialect = session.get_bind().dialect
    sql = str(stmt.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
    explain = "EXPLAIN QUERY PLAN " if dialect.name == "sqlite" else "EXPLAIN "
    return " ".join(str(row) for row in session.execute(text(explain + sql)))


def test_version_indexes_are_partial_and_still_read(url: str) -> None:
    upgrade(url)  # head: the model declares what the migrations made
    engine = make_engine(url, pool_size=1)
    try:
        indexes = media_indexes(engine)
        assert indexes == model_indexes()
        for column in VERSION_COLUMNS:
            assert indexes[f"ix_media_{column}"] == ([column], f"{column} IS NOT NULL")
        assert "ix_media_schema_version" not in indexes

        seed(engine)
        column = MEDIA.c.duration_version
        stale = pending_query(
            PendingRequest(
                kind=BackfillKind.MEDIA_DURATION,
                after_id=0,
                limit=100,
                max_attempts=3,
                lease_seconds=60,
                where=PendingFilter(mode=ReprocessMode.STALE, compute_version=2),
            )
        )
        with Session(engine) as session:
            for stmt in (
                select(func.max(column)).where(column.is_not(None)),  # the newest version
                select(column, func.count()).where(column < 2).group_by(column),  # older ones
                stale,
            ):
                plan = plan_of(session, stmt)
                assert "ix_media_duration_version" in plan, plan
                assert "SCAN media" not in plan and "Seq Scan on media" not in plan, plan
            counted = coverage(session=session, max_attempts=3, lease_seconds=60)
            duration = next(k for k in counted.kinds if k.kind is BackfillKind.MEDIA_DURATION)
            assert duration == scan_coverage(session, BackfillKind.MEDIA_DURATION, 3, 60)
            assert (duration.done, duration.versions) == (200, {1: 20, 2: 180})

        engine.dispose()
        command.downgrade(alembic_config(url), "0004")
        indexes = media_indexes(engine)
        for column in VERSION_COLUMNS:
            assert indexes[f"ix_media_{column}"] == ([column], None)
        assert indexes["ix_media_schema_version"] == (["schema_version"], None)
        engine.dispose()
        assert upgrade(url, "0005").after == "0005"  # and up again
        assert media_indexes(engine) == model_indexes()
    finally:
        engine.dispose()
