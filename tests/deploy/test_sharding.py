"""Shards as parameters: two runs with `shard_count=2`, at the same time, together process
every record exactly once (the flows against a live API, reporting to the test's Prefect
server)."""

from __future__ import annotations

import contextvars
import hashlib
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from api.schemas import MediaIn
from flows.client import BackfillClient
from flows.engine import BackfillReport
from ops.demo import drain_prefect_workers
from tests.conftest import LiveApi
from tests.deploy.conftest import PrefectServer

pytestmark = pytest.mark.e2e


@pytest.fixture
def prefect_api(prefect_server: PrefectServer) -> Iterator[str]:
    """In-process flow runs report to the session's Prefect server."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(
        updates={PREFECT_API_URL: prefect_server.api_url, "flows.heartbeat_frequency": None}
    ):
        yield prefect_server.api_url
        # Send the runs' last logs and events while this server is still the API: left for
        # exit, they would make Prefect start a throwaway server of its own.
        drain_prefect_workers()


def test_two_shards_together_cover_every_record_once(
    prefect_api: str, live_api: LiveApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.file_hashing import file_hashing

    media = tmp_path / "media"
    paths = []
    for i in range(41):
        path = media / "shards" / f"{i:03d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bytes([i]) * (100 + i))
        paths.append(path)
    with BackfillClient(live_api.url, live_api.admin_token) as client:
        client.register_media(
            [MediaIn(uri=p.relative_to(media).as_posix(), media_type="audio") for p in paths]
        )
    monkeypatch.setenv("BACKFILL_API_URL", live_api.url)
    monkeypatch.setenv("BACKFILL_API_TOKEN", live_api.admin_token)
    monkeypatch.setenv("BACKFILL_MEDIA_ROOT", str(media))
    monkeypatch.delenv("BACKFILL_DATABASE_URL", raising=False)

    def shard(index: int) -> BackfillReport:
        report: BackfillReport = file_hashing(batch_size=4, shard_index=index, shard_count=2)
        return report

    with ThreadPoolExecutor(max_workers=2) as pool:
        # Each thread gets this context: the settings that point at the test's server.
        futures = [pool.submit(contextvars.copy_context().run, shard, i) for i in (0, 1)]
        reports = [future.result() for future in futures]

    db = live_api.database_url.removeprefix("sqlite:///")
    with sqlite3.connect(db) as conn:
        ids = [row[0] for row in conn.execute("SELECT id FROM media ORDER BY id")]
        hashes = dict(conn.execute("SELECT uri, sha256 FROM media").fetchall())
        audit = conn.execute(
            "SELECT flow_run_id, sum(applied), sum(unchanged) FROM audit "
            "WHERE kind = 'file-hashing' GROUP BY flow_run_id"
        ).fetchall()
    # Each run took exactly the records of its shard (id % 2), and nothing twice.
    assert [r.processed for r in reports] == [
        sum(1 for i in ids if i % 2 == 0),
        sum(1 for i in ids if i % 2 == 1),
    ]
    assert sorted(applied for _, applied, _ in audit) == sorted(r.applied for r in reports)
    assert sum(applied for _, applied, _ in audit) == len(paths)
    assert all(unchanged == 0 for _, _, unchanged in audit)
    assert {run for run, _, _ in audit} == {r.flow_run_id for r in reports}
    for path in paths:
        uri = path.relative_to(media).as_posix()
        assert hashes[uri] == hashlib.sha256(path.read_bytes()).hexdigest()
