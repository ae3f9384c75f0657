"""Alembic environment: metadata from api.models, the URL from the caller or settings."""

from alembic import context
from sqlmodel import SQLModel

import api.models  # noqa: F401  (registers the tables)
from api.core.config import get_settings
from api.core.db import make_engine

config = context.config
url = config.attributes.get("database_url") or get_settings().DATABASE_URL
target_metadata = SQLModel.metadata


def run_migrations_offline() -> None:
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            compare_type=True,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
