"""Schema migrations with Alembic, callable from the CLI and tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext

from api.core.db import make_engine

MIGRATIONS = Path(__file__).parent / "migrations"


@dataclass(frozen=True)
class Migration:
    """What an upgrade did: the schema revision before (None: no schema) and after."""

    before: str | None
    after: str | None

    def describe(self) -> str:
        if self.before == self.after:
            return f"schema already at revision {self.after}"
        if self.before is None:
            return f"schema created at revision {self.after}"
        return f"schema upgraded from revision {self.before} to {self.after}"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["database_url"] = database_url
    return config


def current_revision(database_url: str) -> str | None:
    """The schema's Alembic revision, or None when the database has no schema yet."""
    engine = make_engine(database_url, pool_size=1)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def upgrade(database_url: str, revision: str = "head") -> Migration:
    """Create or upgrade the schema to `revision`; says what it did."""
    before = current_revision(database_url)
    command.upgrade(alembic_config(database_url), revision)
    return Migration(before=before, after=current_revision(database_url))
