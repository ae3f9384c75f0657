"""Two runs of the same backfill at once (no sharding) while an editor changes records
through the API: no lost update, no double effect, conflicts reported as conflicts.

Real API process (uvicorn over the session's database: SQLite file, or PostgreSQL with
BACKFILL_TEST_DATABASE_URL); the two flow runs and the editor are threads of this process,
each with its own HTTP client, under Prefect's test server.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from api.schemas import BackfillKind, DurationResult, HashResult, MediaIn, Version0Result
from flows.client import BackfillClient
from flows.engine import BackfillReport, ProgressUpdate, progress_listener
from flows.file_hashing import file_hashing
from flows.version_migration import version_migration
from tests.conftest import LiveApi
from tests.flows.conftest import write_wav
from tests.helpers import file_items, register
from tests.reliability.helpers import Db, admin_client, sha256_of, small_files

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_api_url")]

#: What a write that lost a race may be told: the record changed under it.
CONFLICT = re.compile(r"conflict|already schema_version 1")


def wait_for_applied(db: Db, kind: str, at_least: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while db.applied(kind) < at_least:
        assert time.monotonic() < deadline, f"{kind}: fewer than {at_least} applied"
        time.sleep(0.005)


def two_runs_and_an_editor(
    run: Callable[[], BackfillReport], editor: Callable[[], None]
) -> tuple[BackfillReport, BackfillReport]:
    """Two runs of the same flow, each in its own thread, held at their start until both
    are there (creating a flow run on the test server may take seconds), then let go
    together; the editor alongside. Returns both reports once all three are done."""
    both = threading.Barrier(2, timeout=60)
    held: set[int] = set()

    def hold_first_update(_update: ProgressUpdate) -> None:
        # Called in each run's own thread before it pages any work.
        if threading.get_ident() not in held:
            held.add(threading.get_ident())
            both.wait()

    with progress_listener(hold_first_update), ThreadPoolExecutor(3) as pool:
        runs: list[Future[BackfillReport]] = [pool.submit(run) for _ in range(2)]
        edits = pool.submit(editor)
        edits.result()
        first, second = (f.result() for f in runs)
    return first, second


# --- file-hashing: plain writes, no lost update, each hash applied once ---------------------


@dataclass
class Edits:
    """What the editor's writes did."""

    hashes_applied: int = 0
    durations: dict[int, float] = field(default_factory=dict)


@pytest.mark.timeout(120)
def test_two_hashing_runs_and_an_editor_lose_nothing_and_write_once(
    flow_env: LiveApi, media_root: Path, db: Db
) -> None:
    paths = small_files(media_root, 1500)
    ids = register(flow_env, file_items(media_root, paths, sizes=False))
    by_id = {rid: media_root / uri for uri, rid in ids.items()}
    edits = Edits()

    def editor() -> None:
        """While the runs go: durations for every 5th record (a field the runs do not
        write) and, for every 7th, the right hash (a write the runs race to make)."""
        wait_for_applied(db, "file-hashing", 100)
        with admin_client(flow_env) as client:
            for rid in sorted(by_id, reverse=True):  # from the end: ahead of the runs
                if rid % 5 == 0:
                    duration = rid / 8
                    result = client.post_results(
                        BackfillKind.MEDIA_DURATION,
                        [DurationResult(record_id=rid, duration=duration)],
                    )
                    assert (result.applied, result.rejected) == (1, [])
                    edits.durations[rid] = duration
                if rid % 7 == 0:
                    digest = sha256_of(by_id[rid])
                    result = client.post_results(
                        BackfillKind.FILE_HASHING,
                        [HashResult(record_id=rid, hash=digest, algorithm="sha256")],
                    )
                    assert result.rejected == [] and result.applied + result.unchanged == 1
                    edits.hashes_applied += result.applied

    first, second = two_runs_and_an_editor(
        lambda: file_hashing(batch_size=25, concurrency=2), editor
    )

    for report in (first, second):
        assert report.status == "completed", report.reason
        assert (report.failed, report.rejected) == (0, 0)
        assert report.processed == report.applied + report.unchanged
    # No double effect: each record's hash was applied by exactly one writer; every other
    # write of the same value was `unchanged`.
    assert first.applied + second.applied + edits.hashes_applied == len(paths)
    assert first.unchanged + second.unchanged > 0  # the runs did race for the same records
    assert db.applied("file-hashing") == len(paths)
    assert db.applied("media-duration") == len(edits.durations)
    # No lost update: the editor's durations are all there, next to the runs' hashes, and
    # every record's revision is explained by exactly the writes that were applied.
    for row in db.media():
        assert row.hash == sha256_of(media_root / row.uri) and row.hash_algorithm == "sha256"
        assert row.duration == edits.durations.get(row.id)
        assert row.revision == 2 + (row.id in edits.durations), row


# --- version-0: compare-and-set, conflicts reported as conflicts ----------------------------


@pytest.mark.timeout(120)
def test_two_version0_runs_and_an_editor_conflict_cleanly(
    flow_env: LiveApi, media_root: Path, db: Db
) -> None:
    legacy = 600
    paths = [media_root / f"legacy/{n:04d}.wav" for n in range(legacy)]
    for path in paths:
        write_wav(path, frames=800, rate=8000)
    with admin_client(flow_env) as client:
        result = client.register_media(
            [MediaIn(uri=str(p.resolve()), schema_version=0) for p in paths]
        )
    path_of = {i.id: Path(i.uri) for i in result.items if i.id is not None}
    assert len(path_of) == legacy
    won: set[int] = set()
    lost: dict[int, str] = {}

    def upgrade_by_hand(client: BackfillClient, rid: int, revision: int) -> None:
        """Move the record's file to edited/ in its upgrade, with the revision read."""
        result = client.post_results(
            BackfillKind.VERSION_0,
            [
                Version0Result(
                    record_id=rid,
                    expected_revision=revision,
                    uri=f"edited/{rid}.wav",
                    media_type="audio",
                    size_bytes=path_of[rid].stat().st_size,
                    sample_rate=8000,
                    channels=1,
                )
            ],
        )
        if result.applied:
            won.add(rid)
        else:
            assert result.unchanged == 0 and len(result.rejected) == 1
            lost[rid] = result.rejected[0].reason

    def editor() -> None:
        """A person upgrading records by hand with the revision they read: applied only if
        no run upgraded the record in between."""
        ids = sorted(path_of)
        with admin_client(flow_env) as client:
            # Stale: read five early records now, write them after a run upgraded them.
            stale = {rid: client.get_media(rid).revision for rid in ids[40:50:2]}
            deadline = time.monotonic() + 60
            while db.scalar(
                "SELECT COUNT(*) FROM media WHERE schema_version = 0 AND id IN "
                f"({', '.join(map(str, stale))})"
            ):
                assert time.monotonic() < deadline, "the runs never upgraded the early records"
                time.sleep(0.005)
            for rid, revision in stale.items():
                upgrade_by_hand(client, rid, revision)
            # Fresh: every 3rd record from the end, read just before writing, ahead of the
            # runs (which paged them at the start): they must find their writes stale.
            for rid in ids[::-1][::3]:
                record = client.get_media(rid)
                if record.schema_version == 0:
                    upgrade_by_hand(client, rid, record.revision)

    first, second = two_runs_and_an_editor(
        lambda: version_migration(batch_size=20, concurrency=2, max_failure_ratio=1.0), editor
    )

    # The race happened: the editor upgraded records the runs had paged (so their writes
    # went stale), and the runs were told so.
    assert won and first.rejected + second.rejected > 0
    for report in (first, second):
        assert report.status == "completed", report.reason
        assert report.failed == 0
        assert report.processed == report.applied + report.unchanged + report.rejected
        # Every rejection is a conflict, and is counted as rejected, never as applied.
        assert sum(e.count for e in report.top_errors) == report.rejected
        assert all(CONFLICT.search(e.error) for e in report.top_errors), report.top_errors
    # The editor's stale writes were refused as conflicts, and nothing of them stands.
    assert set(lost) >= set(sorted(path_of)[40:50:2]) and not set(lost) & won
    assert all(CONFLICT.search(reason) for reason in lost.values()), lost
    # Each record upgraded exactly once, by a run or by the editor, never both.
    assert first.applied + second.applied + len(won) == legacy
    assert db.applied("version-0") == legacy
    root = media_root.resolve()
    for row in db.media():
        assert (row.schema_version, row.revision) == (1, 2), row
        path = path_of[row.id]
        if row.id in won:  # the editor's write stands: no run overwrote it
            assert row.uri == f"edited/{row.id}.wav"
        else:
            assert row.uri == path.relative_to(root).as_posix()
        assert (row.media_type, row.size_bytes) == ("audio", path.stat().st_size)
        assert (row.sample_rate, row.channels) == (8000, 1)
