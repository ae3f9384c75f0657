"""Chunk tasks on Dask: the knob, and a real run on a local cluster of worker processes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from prefect.task_runners import ThreadPoolTaskRunner

from api.schemas import BackfillKind
from flows.engine import chunk_task_runner
from flows.file_hashing import file_hashing
from flows.settings import ConfigError
from tests.conftest import LiveApi
from tests.flows.test_e2e import coverage, records, register


def test_the_task_runner_is_chosen_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Imported here: prefect_dask (and distributed) cost ~0.4 s of CPU to import, in every
    # xdist worker's collection when at the top.
    from prefect_dask.task_runners import DaskTaskRunner

    monkeypatch.delenv("BACKFILL_TASK_RUNNER", raising=False)
    assert isinstance(chunk_task_runner(), ThreadPoolTaskRunner)

    monkeypatch.setenv("BACKFILL_TASK_RUNNER", "dask")
    monkeypatch.setenv("BACKFILL_DASK_ADDRESS", "tcp://127.0.0.1:8786")
    runner = chunk_task_runner()
    assert isinstance(runner, DaskTaskRunner) and runner.address == "tcp://127.0.0.1:8786"

    monkeypatch.setenv("BACKFILL_TASK_RUNNER", "ray")
    with pytest.raises(ConfigError, match="BACKFILL_TASK_RUNNER"):
        chunk_task_runner()


@pytest.mark.e2e
@pytest.mark.usefixtures("prefect_api_url")
@pytest.mark.timeout(240)
def test_file_hashing_on_a_local_dask_cluster(client_env: LiveApi, media_root: Path) -> None:
    from prefect_dask.task_runners import DaskTaskRunner

    paths = []
    for i in range(12):
        path = media_root / "blobs" / f"{i:02d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(4096 + i))
        paths.append(path)
    register(client_env, media_root, paths, "video")
    # Worker processes: the chunk runner is pickled to them and rebuilds its client from
    # their environment (BACKFILL_* set by client_env, inherited at spawn).
    dask = DaskTaskRunner(
        cluster_kwargs={"n_workers": 1, "processes": True, "threads_per_worker": 2}
    )

    report = file_hashing.with_options(task_runner=dask)(batch_size=5)

    assert (report.status, report.applied, report.chunks) == ("completed", 12, 3)
    expected = {
        p.relative_to(media_root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in paths
    }
    assert {m.uri: m.hash for m in records(client_env)} == expected
    assert coverage(client_env, BackfillKind.FILE_HASHING).pending == 0
