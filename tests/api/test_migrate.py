"""`backfill api migrate` says what it did: created, upgraded, or already current."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from api.cli import app
from api.core.config import get_settings
from api.migrate import Migration, upgrade


@pytest.fixture
def fresh_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A database that does not exist yet, also as the settings' URL."""
    url = f"sqlite:///{tmp_path / 'new.db'}"
    monkeypatch.setenv("BACKFILL_DATABASE_URL", url)
    get_settings.cache_clear()
    yield url
    get_settings.cache_clear()


def test_upgrade_reports_creation_then_nothing_to_do(fresh_url: str) -> None:
    assert upgrade(fresh_url) == Migration(before=None, after="0006")
    assert upgrade(fresh_url) == Migration(before="0006", after="0006")


def test_migration_describes_an_upgrade() -> None:
    assert Migration("0001", "0002").describe() == "schema upgraded from revision 0001 to 0002"


def test_migrate_command_says_what_it_did(fresh_url: str) -> None:
    runner = CliRunner()
    first = runner.invoke(app, ["migrate"])
    second = runner.invoke(app, ["migrate"])
    assert (first.exit_code, second.exit_code) == (0, 0)
    assert first.output == f"schema created at revision 0006: {fresh_url}\n"
    assert second.output == f"schema already at revision 0006: {fresh_url}\n"
