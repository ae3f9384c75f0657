"""partial indexes of pending work per kind; media coverage counters kept by triggers

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29

Frozen SQL: the predicates are copied here (not imported), as a migration must not change
when the code does. They equal `api.models.TODO_WHERE`; a test checks it.

`create_counts` (the counters' table and triggers, undone by `drop_counts`) takes the counters and the columns they
read, and 0003 makes its counters with it: it is part of both migrations' frozen SQL, so
never change what it emits (a new shape of counters is a new function).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CURRENT = "schema_version >= 1"
TODO = {
    "media_duration": {"any": f"{CURRENT} AND duration IS NULL"},
    "file_hashing": {
        "sqlite": f"{CURRENT} AND (hash IS NULL OR hash_algorithm IS NOT 'sha256')",
        "postgresql": f"{CURRENT} AND (hash IS NULL OR hash_algorithm IS DISTINCT FROM 'sha256')",
    },
    "snr_frequency": {"any": f"{CURRENT} AND (snr IS NULL OR frequency IS NULL)"},
    "version_0": {"any": "schema_version = 0"},
}
#: Columns the counters read (the update trigger fires on these).
WATCHED = ("schema_version", "duration", "hash", "hash_algorithm", "snr", "frequency")


def todo(kind: str, dialect: str) -> str:
    return TODO[kind].get(dialect, TODO[kind].get("any", ""))


def counters(dialect: str) -> dict[str, str]:
    """Each counter column and the predicate of the rows it counts."""
    return {
        "records": "TRUE" if dialect == "postgresql" else "1",
        "current_records": CURRENT,
        "legacy_records": "schema_version = 0",
        "duration_todo": todo("media_duration", dialect),
        "hash_todo": todo("file_hashing", dialect),
        "snr_todo": todo("snr_frequency", dialect),
    }


def _of(predicate: str, row: str, watched: Sequence[str]) -> str:
    """`predicate` over the `watched` columns of `row` (NEW or OLD), as 0 or 1."""
    for column in watched:
        predicate = predicate.replace(f"{column} ", f"{row}.{column} ")
    return f"(CASE WHEN {predicate} THEN 1 ELSE 0 END)"


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    for kind in TODO:
        op.create_index(
            f"ix_media_todo_{kind}",
            "media",
            ["id"],
            sqlite_where=sa.text(todo(kind, "sqlite")),
            postgresql_where=sa.text(todo(kind, "postgresql")),
        )
    create_counts(counters(dialect), WATCHED)


def create_counts(predicates: dict[str, str], watched: Sequence[str]) -> None:
    """`media_counts`, counted once from `media`, and the triggers that keep it: a column
    per counter of `predicates` (the rows it counts, over the `watched` columns)."""
    dialect = op.get_bind().dialect.name
    names = list(predicates)
    op.create_table(
        "media_counts",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        *(sa.Column(name, sa.BigInteger(), nullable=False) for name in names),
        sa.PrimaryKeyConstraint("id"),
    )
    columns = ", ".join(names)
    sums = ", ".join(
        f"COALESCE(SUM(CASE WHEN {p} THEN 1 ELSE 0 END), 0)" for p in predicates.values()
    )
    if dialect == "postgresql":  # the id from its sequence, as the trigger rows' will be
        op.execute(f"INSERT INTO media_counts ({columns}) SELECT {sums} FROM media")
        _postgresql_triggers(predicates)
    else:  # the one row the triggers update
        op.execute(f"INSERT INTO media_counts (id, {columns}) SELECT 1, {sums} FROM media")
        _sqlite_triggers(predicates, watched)


def _sqlite_triggers(predicates: dict[str, str], watched: Sequence[str]) -> None:
    """Row triggers on the one counter row: SQLite has one writer at a time, so no waiting.
    `predicates`: each counter column and the rows it counts, over the `watched` columns."""

    def setting(*signed: tuple[str, str]) -> str:
        parts = []
        for name, predicate in predicates.items():
            delta = " ".join(f"{sign} {_of(predicate, row, watched)}" for sign, row in signed)
            parts.append(f"{name} = {name} {delta}")
        return ", ".join(parts)

    statements = {
        "insert": ("AFTER INSERT ON media", setting(("+", "NEW"))),
        "delete": ("AFTER DELETE ON media", setting(("-", "OLD"))),
        "update": (
            f"AFTER UPDATE OF {', '.join(watched)} ON media",
            setting(("+", "NEW"), ("-", "OLD")),
        ),
    }
    for event, (when, assignments) in statements.items():
        op.execute(
            f"CREATE TRIGGER media_counts_{event} {when} FOR EACH ROW BEGIN "
            f"UPDATE media_counts SET {assignments} WHERE id = 1; END"
        )


def _postgresql_triggers(predicates: dict[str, str]) -> None:
    """Statement triggers over the transition tables, each adding one delta row: concurrent
    writers never wait on a counter row (a hot row would also order their locks)."""
    names = list(predicates)
    columns = ", ".join(names)

    agg = ", ".join(f"COUNT(*) FILTER (WHERE {predicates[n]})" for n in names)
    new = f"SELECT {agg} FROM new_rows"
    old = f"SELECT {agg} FROM old_rows"
    bodies = {
        "insert": f"INSERT INTO media_counts ({columns}) {new}",
        "delete": (
            f"INSERT INTO media_counts ({columns}) SELECT "
            + ", ".join(f"-d.{n}" for n in names)
            + f" FROM ({old}) AS d({columns})"
        ),
        "update": (
            f"INSERT INTO media_counts ({columns}) SELECT "
            + ", ".join(f"n.{n} - o.{n}" for n in names)
            + f" FROM ({new}) AS n({columns}), ({old}) AS o({columns}) WHERE "
            + " OR ".join(f"n.{n} <> o.{n}" for n in names)
        ),
    }
    transition = {
        "insert": "REFERENCING NEW TABLE AS new_rows",
        "delete": "REFERENCING OLD TABLE AS old_rows",
        "update": "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows",
    }
    for event, body in bodies.items():
        op.execute(
            f"CREATE FUNCTION media_counts_{event}() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN {body}; RETURN NULL; END $$"
        )
        op.execute(
            f"CREATE TRIGGER media_counts_{event} AFTER {event.upper()} ON media "
            f"{transition[event]} FOR EACH STATEMENT EXECUTE FUNCTION media_counts_{event}()"
        )
    # TRUNCATE has no transition table: the counts start again from zero.
    zeros = ", ".join("0" for _ in names)
    op.execute(
        "CREATE FUNCTION media_counts_truncate() RETURNS trigger LANGUAGE plpgsql AS $$ "
        f"BEGIN DELETE FROM media_counts; INSERT INTO media_counts ({columns}) VALUES ({zeros}); "
        "RETURN NULL; END $$"
    )
    op.execute(
        "CREATE TRIGGER media_counts_truncate AFTER TRUNCATE ON media "
        "FOR EACH STATEMENT EXECUTE FUNCTION media_counts_truncate()"
    )


def downgrade() -> None:
    for kind in TODO:
        op.drop_index(f"ix_media_todo_{kind}", table_name="media")
    drop_counts()


def drop_counts() -> None:
    """Undo `create_counts`: the triggers, their functions (PostgreSQL), the table."""
    if op.get_bind().dialect.name == "postgresql":
        for event in ("insert", "delete", "update", "truncate"):
            op.execute(f"DROP TRIGGER IF EXISTS media_counts_{event} ON media")
            op.execute(f"DROP FUNCTION IF EXISTS media_counts_{event}()")
    else:
        for event in ("insert", "delete", "update"):
            op.execute(f"DROP TRIGGER IF EXISTS media_counts_{event}")
    op.drop_table("media_counts")
