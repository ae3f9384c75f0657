"""version indexes hold only versioned rows; no index on schema_version

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30

A record is registered with every compute version NULL, and each of the seven version
indexes (0003) took an entry for it all the same: seven index writes per registered record,
half the cost of a bulk import. The readers of these indexes ask for a version range
(`x_version < n`) or the newest (`MAX(x_version)`, asked `WHERE x_version IS NOT NULL`), which
never match NULL, so each index now holds only the rows that have a version: the planners of
SQLite and PostgreSQL use the partial index for those queries (tests check the plans).

`ix_media_schema_version` (0001) goes: pending legacy work reads `ix_media_todo_version_0`,
the counters count by schema version, and `GET /media?schema_version=` pages by id.

Frozen SQL, as in 0002 and 0003.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VERSION_COLUMNS = (
    "duration_version",
    "snr_version",
    "migration_version",
    "sha256_version",
    "blake2b_version",
    "sha1_version",
    "md5_version",
)


def versioned(column: str) -> str:
    """The rows a version index holds."""
    return f"{column} IS NOT NULL"


def upgrade() -> None:
    op.drop_index("ix_media_schema_version", table_name="media")
    for column in VERSION_COLUMNS:
        op.drop_index(f"ix_media_{column}", table_name="media")
        op.create_index(
            f"ix_media_{column}",
            "media",
            [column],
            sqlite_where=sa.text(versioned(column)),
            postgresql_where=sa.text(versioned(column)),
        )


def downgrade() -> None:
    for column in VERSION_COLUMNS:
        op.drop_index(f"ix_media_{column}", table_name="media")
        op.create_index(f"ix_media_{column}", "media", [column])
    op.create_index("ix_media_schema_version", "media", ["schema_version"])
