"""The client side never loads a database driver: import and run the flows in a fresh
process whose environment has no database URL, then look at what it imported."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, LiveApi
from tests.flows.conftest import write_wav

SCRIPT = """
import json, sys
import ops.cli, flows.file_hashing, flows.media_duration, flows.registry
from api.schemas import MediaIn
from flows.client import BackfillClient
from flows.settings import load_settings

settings = load_settings()
with BackfillClient.from_settings(settings) as client:
    client.register_media([MediaIn(uri=f"{i}.wav", media_type="audio") for i in range(3)])
durations = flows.media_duration.media_duration()
hashes = flows.file_hashing.file_hashing(algorithm="blake2b")
forbidden = ("sqlalchemy", "sqlmodel", "alembic", "psycopg", "aiosqlite", "asyncpg")
loaded = sorted({name.split(".")[0] for name in sys.modules} & set(forbidden))
print(json.dumps({"loaded": loaded, "durations": durations.applied, "hashes": hashes.applied}))
"""


@pytest.mark.e2e
def test_flows_run_without_database_modules_or_url(
    prefect_api_url: str, live_api: LiveApi, tmp_path: Path
) -> None:
    media = tmp_path / "media"
    for i in range(3):
        write_wav(media / f"{i}.wav", frames=100)
    env = {
        k: v
        for k, v in os.environ.items()
        if "DATABASE" not in k and not k.startswith(("BACKFILL_", "PREFECT_"))
    }
    env |= {
        "PREFECT_API_URL": prefect_api_url,
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "BACKFILL_API_URL": live_api.url,
        "BACKFILL_API_TOKEN": live_api.admin_token,
        "BACKFILL_MEDIA_ROOT": str(media),
    }

    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )

    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome == {"loaded": [], "durations": 3, "hashes": 3}


def test_flows_import_nothing_from_the_operator_tools() -> None:
    """ops/ may use flows/ and api/; flows/ never uses ops/ (nor api/ beyond the contract)."""
    found = []
    for path in sorted((ROOT / "flows").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            found += [
                f"{path.relative_to(ROOT)}: {name}"
                for name in names
                if name.split(".")[0] == "ops"
                or (name.split(".")[0] == "api" and name != "api.schemas")
            ]
    assert found == []
