"""Engine and sessions. SQLite gets WAL, a busy timeout and write-locking transactions."""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlmodel import Session, create_engine


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from pysqlite so BEGIN IMMEDIATE below is honoured.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        if conn.get_execution_options().get(READ_ONLY):
            # A snapshot for reads: in WAL mode a reader neither waits for nor blocks writers.
            conn.exec_driver_sql("BEGIN")
            return
        # Every other transaction takes the write lock up front: read-then-write batches are
        # then serialised instead of failing with "database is locked" on lock upgrade.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


#: Execution option of an engine whose transactions only read (see `read_only`).
READ_ONLY = "backfill_read_only"


def read_only(engine: Engine) -> Engine:
    """The same engine and pool for transactions that only read: on SQLite they skip the write
    lock (BEGIN instead of BEGIN IMMEDIATE); on PostgreSQL nothing changes."""
    return engine.execution_options(**{READ_ONLY: True})


def make_engine(url: str, *, pool_size: int = 10) -> Engine:
    """Create an engine for `url`; SQLite files get their parent folder created."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False})
        _sqlite_setup(engine)
        return engine
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


@lru_cache
def engine_for(url: str) -> Engine:
    """One engine per URL per process."""
    from api.core.config import get_settings

    return make_engine(url, pool_size=get_settings().DB_POOL_SIZE)


def session_scope(engine: Engine) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as session:
        yield session


def upsert(session: Session, table: Any) -> Any:
    """`INSERT` with `ON CONFLICT` for the session's dialect (PostgreSQL or SQLite)."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    return dialect.insert(table)
