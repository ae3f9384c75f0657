"""The real flows against a real API (uvicorn on 127.0.0.1, a temp SQLite file) under
Prefect's test server."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from pathlib import Path

import pytest

from api.schemas import BackfillKind, HashAlgorithm, KindCoverage, MediaIn, MediaPublic, MediaType
from flows.client import BackfillClient
from flows.engine import BackfillFailed, ProgressUpdate, progress_listener
from flows.file_hashing import file_hashing
from flows.media_duration import media_duration
from tests.conftest import LiveApi
from tests.flows.conftest import write_wav

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_api_url")]


def api_client(api: LiveApi) -> BackfillClient:
    return BackfillClient(api.url, api.admin_token)


def register(api: LiveApi, root: Path, paths: list[Path], media_type: MediaType) -> list[int]:
    items = [
        MediaIn(
            uri=p.relative_to(root).as_posix(), media_type=media_type, size_bytes=p.stat().st_size
        )
        for p in paths
    ]
    with api_client(api) as client:
        result = client.register_media(items)
    assert [i.status for i in result.items] == ["created"] * len(paths)
    return [i.id for i in result.items if i.id is not None]


def records(api: LiveApi) -> list[MediaPublic]:
    with api_client(api) as client:
        return client.list_media().items


def coverage(api: LiveApi, kind: BackfillKind) -> KindCoverage:
    with api_client(api) as client:
        return next(k for k in client.coverage().kinds if k.kind == kind)


def random_files(root: Path, sizes: list[int]) -> list[Path]:
    paths = []
    for i, size in enumerate(sizes):
        path = root / "blobs" / f"{i:03d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
        paths.append(path)
    return paths


def test_file_hashing_fills_every_record(client_env: LiveApi, media_root: Path) -> None:
    paths = random_files(media_root, [0, 1, 4096, 3 << 20, 1 << 20, 77, 5000, 123_456])
    register(client_env, media_root, paths, "audio")

    report = file_hashing(batch_size=3)

    assert report.status == "completed"
    assert (report.processed, report.applied, report.failed) == (8, 8, 0)
    by_uri = {r.uri: r for r in records(client_env)}
    for path in paths:
        record = by_uri[path.relative_to(media_root).as_posix()]
        assert record.hash == hashlib.sha256(path.read_bytes()).hexdigest()
        assert record.hash_algorithm == "sha256"

    again = file_hashing(batch_size=3)
    assert again.processed == 0 and again.status == "completed"

    # Another algorithm has its own pending work; the sha256 digests stay.
    md5 = file_hashing(algorithm=HashAlgorithm.MD5)
    assert md5.applied == 8
    for record in records(client_env):
        data = (media_root / record.uri).read_bytes()
        assert record.digests[HashAlgorithm.MD5].digest == hashlib.md5(data).hexdigest()
        assert record.hash == hashlib.sha256(data).hexdigest()
        assert record.hash_algorithm == "sha256"
    assert file_hashing().processed == 0


def test_media_duration_fills_durations(client_env: LiveApi, media_root: Path) -> None:
    expected = {}
    for i, (frames, rate) in enumerate([(8000, 8000), (12_345, 16_000), (1, 44_100), (0, 8000)]):
        path = media_root / f"audio/{i}.wav"
        expected[path.relative_to(media_root).as_posix()] = write_wav(
            path, frames=frames, rate=rate
        )
    register(client_env, media_root, [media_root / uri for uri in expected], "audio")

    report = media_duration(batch_size=2)

    assert (report.applied, report.failed) == (4, 0)
    assert {r.uri: r.duration for r in records(client_env)} == expected
    assert media_duration().processed == 0
    assert coverage(client_env, BackfillKind.MEDIA_DURATION).done == 4


def test_corrupt_file_is_one_failure_and_the_run_completes(
    client_env: LiveApi, media_root: Path
) -> None:
    paths = [media_root / f"ok/{i}.wav" for i in range(9)]
    for i, path in enumerate(paths):
        write_wav(path, frames=100 * (i + 1))
    corrupt = media_root / "bad/corrupt.wav"
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + os.urandom(200))
    register(client_env, media_root, [*paths, corrupt], "audio")

    report = media_duration(batch_size=4, max_failure_ratio=0.2)

    assert report.status == "completed"
    assert (report.applied, report.failed) == (9, 1)
    assert len(report.top_errors) == 1 and report.top_errors[0].count == 1
    cov = coverage(client_env, BackfillKind.MEDIA_DURATION)
    assert (cov.done, cov.failed, cov.pending) == (9, 1, 1)
    with api_client(client_env) as client:
        ledger = client.failures(BackfillKind.MEDIA_DURATION).items
    assert [(f.uri, f.attempts, f.quarantined) for f in ledger] == [("bad/corrupt.wav", 1, False)]
    assert ledger[0].last_error == report.top_errors[0].error.replace("<uri>", "bad/corrupt.wav")


def test_dry_run_changes_nothing(client_env: LiveApi, media_root: Path) -> None:
    paths = [media_root / f"a/{i}.wav" for i in range(3)]
    for path in paths:
        write_wav(path, frames=400)
    corrupt = media_root / "a/corrupt.wav"
    corrupt.write_bytes(b"not audio at all")
    register(client_env, media_root, [*paths, corrupt], "audio")
    before = records(client_env)

    report = media_duration(dry_run=True, max_failure_ratio=0.5)

    assert report.dry_run and (report.applied, report.failed) == (3, 1)
    assert records(client_env) == before
    cov = coverage(client_env, BackfillKind.MEDIA_DURATION)
    assert (cov.done, cov.failed, cov.pending) == (0, 0, 4)


def test_failure_ratio_ends_the_run_failed(client_env: LiveApi, media_root: Path) -> None:
    good = media_root / "x/good.wav"
    write_wav(good, frames=10)
    bad = media_root / "x/bad.wav"
    bad.write_bytes(b"\x00" * 64)
    register(client_env, media_root, [good, bad], "audio")

    with pytest.raises(BackfillFailed, match="1 of 2 records failed"):
        media_duration(max_failure_ratio=0.1)


def test_api_going_away_mid_run_completes_and_writes_once(
    client_env: LiveApi, media_root: Path
) -> None:
    paths = random_files(media_root, [20_000 + i for i in range(30)])
    register(client_env, media_root, paths, "video")
    outage = threading.Event()
    restarted: list[threading.Thread] = []

    def take_the_api_down(update: ProgressUpdate) -> None:
        if update.processed and not outage.is_set():
            outage.set()
            client_env.stop()  # chunks still to submit and pages still to fetch hit it
            thread = threading.Timer(1.0, client_env.start)
            thread.start()
            restarted.append(thread)

    with progress_listener(take_the_api_down):
        report = file_hashing(batch_size=3, concurrency=2)
    for thread in restarted:
        thread.join()

    assert outage.is_set()
    assert report.status == "completed"
    assert (report.processed, report.applied, report.unchanged, report.failed) == (30, 30, 0, 0)
    for record in records(client_env):
        assert record.hash == hashlib.sha256((media_root / record.uri).read_bytes()).hexdigest()
    # Written once: the applied counts of the audit rows add up to exactly one per record.
    db = client_env.database_url.removeprefix("sqlite:///")
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT applied, flow_run_id FROM audit WHERE kind = 'file-hashing' AND NOT dry_run"
        ).fetchall()
    assert sum(applied for applied, _ in rows) == 30
    assert report.flow_run_id and {run for _, run in rows} == {report.flow_run_id}
