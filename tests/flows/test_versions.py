"""Reprocess modes and compute versions, and one digest per hash algorithm: the real flows
against a real API (uvicorn, a temp SQLite file) under Prefect's test server."""

from __future__ import annotations

import dataclasses
import hashlib
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

import flows.media_duration
import ops.cli
from api.schemas import (
    BackfillKind,
    HashAlgorithm,
    KindCoverage,
    PendingFilter,
    ReprocessMode,
)
from flows.file_hashing import file_hashing
from flows.media_duration import MEDIA_DURATION, DurationParams, media_duration
from ops.cli import app
from tests.conftest import ROOT, LiveApi
from tests.flows.conftest import write_wav
from tests.flows.test_e2e import api_client, random_files, records, register

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_api_url")]


def kinds(api: LiveApi, kind: BackfillKind) -> dict[str | None, KindCoverage]:
    """The kind's coverage rows, by algorithm (None for kinds without one)."""
    with api_client(api) as client:
        return {k.algorithm: k for k in client.coverage().kinds if k.kind == kind}


def stale_ids(api: LiveApi, version: int) -> list[int]:
    where = PendingFilter(mode=ReprocessMode.STALE, compute_version=version)
    with api_client(api) as client:
        page = client.pending(BackfillKind.MEDIA_DURATION, where=where)
    return [item.record_id for item in page.items]


def test_stale_after_a_version_bump_recomputes_exactly_the_old_records(
    client_env: LiveApi, media_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = [media_root / f"v/{i}.wav" for i in range(5)]
    for i, path in enumerate(paths):
        write_wav(path, frames=8000 * (i + 1))
    ids = register(client_env, media_root, paths, "audio")

    old = media_duration(limit=3)  # version 1 makes the first three
    assert (old.status, old.applied) == ("completed", 3)
    monkeypatch.setattr(
        flows.media_duration,
        "MEDIA_DURATION",
        dataclasses.replace(MEDIA_DURATION, compute_version=2),
    )
    new = media_duration()  # version 2 makes the other two
    assert new.applied == 2
    assert kinds(client_env, BackfillKind.MEDIA_DURATION)[None].versions == {1: 3, 2: 2}
    before = {r.id: r for r in records(client_env)}
    assert stale_ids(client_env, 2) == ids[:3]

    stale = media_duration(mode=ReprocessMode.STALE)

    assert (stale.status, stale.processed, stale.applied) == ("completed", 3, 3)
    after = {r.id: r for r in records(client_env)}
    # Exactly the old records were written again (same durations, now version 2).
    assert [i for i in ids if after[i].revision != before[i].revision] == ids[:3]
    assert {after[i].duration_version for i in ids} == {2}
    assert all(after[i].duration == before[i].duration for i in ids)
    assert kinds(client_env, BackfillKind.MEDIA_DURATION)[None].versions == {2: 5}
    assert stale_ids(client_env, 2) == []
    assert media_duration(mode=ReprocessMode.STALE).processed == 0

    # mode=all recomputes every record once; equal values of the same version are unchanged.
    every = media_duration(mode=ReprocessMode.ALL, batch_size=2)
    assert (every.processed, every.applied, every.unchanged) == (5, 0, 5)
    assert {r.id: r.revision for r in records(client_env)} == {i: after[i].revision for i in ids}

    # A run of the old code cannot undo the newer values.
    monkeypatch.setattr(flows.media_duration, "MEDIA_DURATION", MEDIA_DURATION)
    older = media_duration(mode=ReprocessMode.ALL, max_failure_ratio=1.0)
    assert (older.applied, older.rejected) == (0, 5)
    assert {r.duration_version for r in records(client_env)} == {2}


def test_each_algorithm_keeps_its_own_digest(client_env: LiveApi, media_root: Path) -> None:
    paths = random_files(media_root, [0, 1, 4096, 70_000, 5])
    register(client_env, media_root, paths, "audio")

    blake = file_hashing(algorithm=HashAlgorithm.BLAKE2B, batch_size=2)
    assert blake.applied == 5
    cov = kinds(client_env, BackfillKind.FILE_HASHING)
    assert (cov[HashAlgorithm.SHA256].done, cov[HashAlgorithm.SHA256].pending) == (0, 5)
    assert (cov[HashAlgorithm.BLAKE2B].done, cov[HashAlgorithm.BLAKE2B].versions) == (5, {1: 5})

    sha = file_hashing()
    assert sha.applied == 5  # sha256 does its own work ...
    assert file_hashing(algorithm=HashAlgorithm.BLAKE2B).processed == 0  # ... and undoes none
    assert file_hashing().processed == 0

    cov = kinds(client_env, BackfillKind.FILE_HASHING)
    assert set(cov) == {HashAlgorithm.SHA256, HashAlgorithm.BLAKE2B}
    assert all((c.done, c.pending, c.versions) == (5, 0, {1: 5}) for c in cov.values())
    for record in records(client_env):
        data = (media_root / record.uri).read_bytes()
        assert {a: d.digest for a, d in record.digests.items()} == {
            HashAlgorithm.SHA256: hashlib.sha256(data).hexdigest(),
            HashAlgorithm.BLAKE2B: hashlib.blake2b(data).hexdigest(),
        }
        assert record.hash == hashlib.sha256(data).hexdigest()


def test_the_operations_commands_do_what_the_section_says(
    client_env: LiveApi, media_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The `# tested` command lines of docs/operations.md, "Reprocess modes and compute
    versions", run as written (in this process, so the version bump is a monkeypatch)."""
    monkeypatch.setenv("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    text = (ROOT / "docs/operations.md").read_text()
    section = text.split("## Reprocess modes and compute versions", 1)[1].split("\n## ", 1)[0]
    tested = [line.split("#")[0].strip() for line in section.splitlines() if "# tested" in line]
    assert tested == [
        "uv run backfill run media-duration --mode stale",
        "uv run backfill run file-hashing -p algorithm=blake2b",
    ]
    stale, blake = (shlex.split(line)[3:] for line in tested)  # after `uv run backfill`
    paths = [media_root / f"d/{i}.wav" for i in range(3)]
    for path in paths:
        write_wav(path, frames=4000)
    register(client_env, media_root, paths, "audio")
    media_duration()
    monkeypatch.setattr(
        flows.media_duration,
        "MEDIA_DURATION",
        dataclasses.replace(MEDIA_DURATION, compute_version=2),
    )
    cli = CliRunner()

    ran = cli.invoke(app, stale)
    assert ran.exit_code == 0, ran.output
    assert kinds(client_env, BackfillKind.MEDIA_DURATION)[None].versions == {2: 3}
    ran = cli.invoke(app, blake)
    assert ran.exit_code == 0, ran.output
    cov = kinds(client_env, BackfillKind.FILE_HASHING)
    assert (cov[HashAlgorithm.SHA256].done, cov[HashAlgorithm.BLAKE2B].done) == (0, 3)

    monkeypatch.setattr(ops.cli.console, "width", 200)  # one line per row
    status = cli.invoke(app, ["status"])
    assert status.exit_code == 0, status.output
    assert "file-hashing (blake2b)" in status.stdout and "v2:3" in status.stdout


def test_kinds_that_cannot_recompute_refuse_all_and_stale() -> None:
    from flows.clip_compile import CompileParams
    from flows.version_migration import Version0Params

    for params in (CompileParams, Version0Params):
        assert params(mode=ReprocessMode.FAILED).mode is ReprocessMode.FAILED
        for mode in (ReprocessMode.ALL, ReprocessMode.STALE):
            with pytest.raises(ValueError, match=f"mode {mode} does not apply"):
                params(mode=mode)
    assert DurationParams(mode=ReprocessMode.STALE).pending_filter(3) == PendingFilter(
        mode=ReprocessMode.STALE, compute_version=3
    )


def test_only_failed_is_the_old_spelling_of_mode_failed() -> None:
    assert DurationParams(only_failed=True).mode is ReprocessMode.FAILED
    assert DurationParams(only_failed=True).pending_filter(1).mode is ReprocessMode.FAILED
    assert DurationParams().mode is ReprocessMode.MISSING
    with pytest.raises(ValueError, match="only_failed means mode=failed, not mode=all"):
        DurationParams(only_failed=True, mode=ReprocessMode.ALL)
