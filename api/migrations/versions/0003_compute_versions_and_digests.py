"""compute versions beside each value; one digest per hash algorithm

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30

- media: `duration_version`, `snr_version`, `migration_version` (version-0), and per hash
  algorithm a digest column and its version (`sha256`, `sha256_version`, ... `md5`); the
  single `hash`/`hash_algorithm` pair is moved into them (version 1) and dropped. Every value
  already stored is version 1. projects: `compile_version` (1 for compiled projects).
- one index per version column (coverage counts old versions by an index range), and one
  partial index of pending work per hash algorithm instead of the one for sha256.
- `media_counts` gets a to-do counter per algorithm (`hash_todo` becomes `sha256_todo`): the
  table and its triggers are made again, counted once from `media`.

Frozen SQL, as in 0002: the predicates equal `api.models.TODO_WHERE` (a test checks it). The
counters' table and triggers are made by 0002's `create_counts`, frozen there.
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ALGORITHMS = ("sha256", "blake2b", "sha1", "md5")
DIGEST_LENGTH = {"sha256": 64, "blake2b": 128, "sha1": 40, "md5": 32}
CURRENT = "schema_version >= 1"
TODO = {
    "media_duration": f"{CURRENT} AND duration IS NULL",
    **{f"file_hashing_{a}": f"{CURRENT} AND {a} IS NULL" for a in ALGORITHMS},
    "snr_frequency": f"{CURRENT} AND (snr IS NULL OR frequency IS NULL)",
    "version_0": "schema_version = 0",
}
VERSION_COLUMNS = (
    "duration_version",
    "snr_version",
    "migration_version",
    *(f"{a}_version" for a in ALGORITHMS),
)
#: Columns the counters read (the update trigger fires on these).
WATCHED = ("schema_version", "duration", *ALGORITHMS, "snr", "frequency")


def todo(name: str, dialect: str = "any") -> str:
    return TODO[name]


def counters(dialect: str) -> dict[str, str]:
    """Each counter column and the predicate of the rows it counts."""
    return {
        "records": "TRUE" if dialect == "postgresql" else "1",
        "current_records": CURRENT,
        "legacy_records": "schema_version = 0",
        "duration_todo": TODO["media_duration"],
        **{f"{a}_todo": TODO[f"file_hashing_{a}"] for a in ALGORITHMS},
        "snr_todo": TODO["snr_frequency"],
    }


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    _migration_0002().drop_counts()
    op.drop_index("ix_media_todo_file_hashing", table_name="media")
    for column in ("duration_version", "snr_version", "migration_version"):
        op.add_column("media", sa.Column(column, sa.Integer(), nullable=True))
    for algorithm in ALGORITHMS:
        op.add_column(
            "media", sa.Column(algorithm, sa.String(DIGEST_LENGTH[algorithm]), nullable=True)
        )
        op.add_column("media", sa.Column(f"{algorithm}_version", sa.Integer(), nullable=True))
    op.add_column("projects", sa.Column("compile_version", sa.Integer(), nullable=True))

    # Every value stored so far is version 1; the one hash moves to its algorithm's column.
    op.execute("UPDATE media SET duration_version = 1 WHERE duration IS NOT NULL")
    op.execute("UPDATE media SET snr_version = 1 WHERE snr IS NOT NULL OR frequency IS NOT NULL")
    for algorithm in ALGORITHMS:
        op.execute(
            f"UPDATE media SET {algorithm} = hash, {algorithm}_version = 1 "
            f"WHERE hash IS NOT NULL AND hash_algorithm = '{algorithm}'"
        )
    op.execute("UPDATE projects SET compile_version = 1 WHERE status = 'compiled'")
    op.execute("ALTER TABLE media DROP COLUMN hash_algorithm")
    op.execute("ALTER TABLE media DROP COLUMN hash")

    for algorithm in ALGORITHMS:
        name = f"file_hashing_{algorithm}"
        op.create_index(
            f"ix_media_todo_{name}",
            "media",
            ["id"],
            sqlite_where=sa.text(TODO[name]),
            postgresql_where=sa.text(TODO[name]),
        )
    for column in VERSION_COLUMNS:
        op.create_index(f"ix_media_{column}", "media", [column])
    _migration_0002().create_counts(counters(dialect), WATCHED)


def _migration_0002() -> Any:
    """Migration 0002's module: its `create_counts` (frozen there) and its upgrade."""
    path = Path(__file__).with_name("0002_pending_indexes_and_counts.py")
    spec = importlib.util.spec_from_file_location("migration_0002", path)
    assert spec is not None and spec.loader is not None
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)
    return migration


def downgrade() -> None:
    """Back to one hash per record (sha256 kept when there are several); versions dropped."""
    dialect = op.get_bind().dialect.name
    _migration_0002().drop_counts()
    for name in TODO:
        op.drop_index(f"ix_media_todo_{name}", table_name="media")
    for column in VERSION_COLUMNS:
        op.drop_index(f"ix_media_{column}", table_name="media")
    op.add_column("media", sa.Column("hash", sa.String(128), nullable=True))
    op.add_column("media", sa.Column("hash_algorithm", sa.String(16), nullable=True))
    for algorithm in reversed(ALGORITHMS):  # sha256 last: it wins
        op.execute(
            f"UPDATE media SET hash = {algorithm}, hash_algorithm = '{algorithm}' "
            f"WHERE {algorithm} IS NOT NULL"
        )
    for column in (*VERSION_COLUMNS, *ALGORITHMS):
        op.execute(f"ALTER TABLE media DROP COLUMN {column}")
    op.execute("ALTER TABLE projects DROP COLUMN compile_version")
    # 0002's indexes and counters, made by 0002 itself.
    _migration_0002().upgrade()
