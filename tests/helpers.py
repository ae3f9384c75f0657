"""Helpers shared by the test folders: register media through the live API, empty the
database between tests. Fixtures live in the conftest files; plain functions live here."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from api.schemas import MediaIn, MediaType

if TYPE_CHECKING:
    from tests.conftest import LiveApi

#: Every table the API writes, emptied between tests (the seeded `free` tier stays).
TABLES = (
    "run_events",
    "runs",
    "plan_items",
    "plans",
    "render_usage",
    "clips",
    "projects",
    "owners",
    "audit",
    "idempotency_keys",
    "backfill_failures",
    "api_tokens",
    "media",
)


def empty_tables(database_url: str, *, keep_tokens: bool = False) -> None:
    """Delete every row the API wrote (the tokens too unless `keep_tokens`), keeping the
    seeded `free` tier."""
    from sqlalchemy import text

    from api.core.db import engine_for

    with engine_for(database_url).begin() as conn:
        for table in TABLES:
            if not (keep_tokens and table == "api_tokens"):
                conn.execute(text(f"DELETE FROM {table}"))
        conn.execute(text("DELETE FROM tiers WHERE name <> 'free'"))


def file_items(
    root: Path, paths: Iterable[Path], media_type: MediaType = "audio", *, sizes: bool = True
) -> list[MediaIn]:
    """The registration of files under `root`: uri relative to it, size read from disk."""
    return [
        MediaIn(
            uri=p.relative_to(root).as_posix(),
            media_type=media_type,
            size_bytes=p.stat().st_size if sizes else None,
        )
        for p in paths
    ]


def register(api: LiveApi, items: Sequence[MediaIn]) -> dict[str, int]:
    """Register `items` through `api` (1,000 a request); uri -> record id, in order.
    Fails the test unless every item was created."""
    from flows.client import BackfillClient

    ids: dict[str, int] = {}
    with BackfillClient(api.url, api.admin_token) as client:
        for start in range(0, len(items), 1000):
            chunk = items[start : start + 1000]
            result = client.register_media(list(chunk))
            assert [i.status for i in result.items] == ["created"] * len(chunk), result
            ids |= {i.uri: i.id for i in result.items if i.id is not None}
    return ids


def load_migration(filename: str) -> ModuleType:
    """A migration module of api/migrations/versions, by file name (they are not a package)."""
    path = Path(__file__).resolve().parents[1] / "api/migrations/versions" / filename
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
