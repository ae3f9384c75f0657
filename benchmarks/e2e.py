"""End to end over many tiny files: `backfill media import`, then one media-duration run
through a work pool, with one pool worker and with two fanned out (records/s, speed-up).

    uv run python -m benchmarks.e2e                       # 100,000 files
    uv run python -m benchmarks.e2e --files 20000         # a smaller corpus

Writes `--files` tiny WAVs (8 kHz mono, about 0.25 s each; kept in `--dir` for the next run)
and, as an operator would, creates the `backfills` process pool and deploys
`media-duration/adhoc` from `prefect.yaml` on a Prefect server started for the benchmark. Then
for each worker count, a fresh API (uvicorn, a temp SQLite file), the records imported
through the API (`ops.importer`, NDJSON lines), N `prefect worker start --pool backfills`
processes online, and timed from the command to its exit:

  1 worker    prefect deployment run media-duration/adhoc --param shards=1 --watch
  2 workers   prefect deployment run media-duration/adhoc --param shards=2 --watch
              (the parent fans out into two shard runs that either worker takes)

so the figure includes what production pays: the worker picking the run up, the flow-run
process start, and for the fan-out the children's scheduling. Every record must end with the
exact duration (frames / rate).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

from benchmarks.duration import make_wavs
from benchmarks.hashing import ROOT, Bench, LocalApi, flow_env, local_api, prefect_env, run_python
from flows.client import BackfillClient
from ops.importer import import_media


def import_files(api: LocalApi, media_root: Path, durations: dict[Path, float]) -> float:
    """Register every file through `backfill media import`'s engine; records/s."""
    lines = (
        json.dumps(
            {"uri": p.relative_to(media_root).as_posix(), "media_type": "audio", "size_bytes": 1}
        )
        for p in sorted(durations)
    )
    started = time.perf_counter()
    with BackfillClient(api.url, api.token) as client:
        report = import_media(client, lines)
    assert report.created == len(durations), report
    return len(durations) / (time.perf_counter() - started)


#: The deployment every run goes through (from prefect.yaml; its queue has no schedule).
DEPLOYMENT = "media-duration/adhoc"


def prefect(env: dict[str, str], *args: str) -> float:
    """`python -m prefect ARGS` from the project folder: its wall seconds."""
    return run_python(f"prefect {' '.join(args)}", "-m", "prefect", *args, env=env)[0]


def deploy(env: dict[str, str]) -> None:
    """The operator's set-up: the process pool, then the deployment from prefect.yaml."""
    prefect(env, "work-pool", "create", "backfills", "--type", "process", "--overwrite")
    prefect(env, "deploy", "--name", DEPLOYMENT)


def online_workers(prefect_url: str) -> set[str]:
    response = httpx.post(f"{prefect_url}/work_pools/backfills/workers/filter", json={})
    response.raise_for_status()
    return {w["name"] for w in response.json() if w["status"] == "ONLINE"}


@contextmanager
def pool_workers(
    env: dict[str, str], prefect_url: str, count: int, logdir: Path, timeout: float = 300
) -> Iterator[None]:
    """`count` pool workers, online (on `timeout`); each stopped afterwards."""
    names = [f"bench-{count}-{i}" for i in range(count)]
    procs = []
    try:
        for name in names:
            command = [sys.executable, "-m", "prefect", "worker", "start", "--pool", "backfills"]
            with (logdir / f"{name}.log").open("ab") as log:
                procs.append(
                    subprocess.Popen(
                        [*command, "--name", name],
                        cwd=ROOT,
                        env=env | {"PREFECT_WORKER_QUERY_SECONDS": "1"},
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        deadline = time.monotonic() + timeout
        while not set(names) <= online_workers(prefect_url):
            if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
                raise RuntimeError(f"pool workers {names} did not come online; see {logdir}")
            time.sleep(0.5)
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def backfill(env: dict[str, str], shards: int) -> float:
    """Seconds of `prefect deployment run media-duration/adhoc --param shards=N --watch`."""
    params = ["--param", f"shards={shards}", "--param", "batch_size=1000"]
    return prefect(env, "deployment", "run", DEPLOYMENT, *params, "--watch")


def measure(bench: Bench, files: int = 100_000) -> dict[str, float]:
    workdir, log = bench.workdir, bench.log
    media_root = workdir / "media"
    log(f"writing {files:,} tiny WAVs (kept for the next run) ...")
    everything = make_wavs(media_root / "wav", files)
    expected = {p.relative_to(media_root).as_posix(): d for p, d in everything.items()}
    figures: dict[str, float] = {"files": float(files)}
    with bench.prefect() as prefect_url:
        deploy(prefect_env(workdir) | {"PREFECT_API_URL": prefect_url})
        for workers in (1, 2):
            with local_api(workdir) as api:
                env = flow_env(workdir, prefect_url, api, media_root, COLUMNS="120")
                rate = import_files(api, media_root, everything)
                with pool_workers(env, prefect_url, workers, workdir):
                    seconds = backfill(env, shards=workers)
                found = api.durations()
            assert found == expected, "a record without its exact duration"
            figures[f"import_records_per_s_{workers}w"] = rate
            figures[f"seconds_{workers}w"] = seconds
            figures[f"records_per_s_{workers}w"] = files / seconds
            log(
                f"{workers} worker{'s' if workers > 1 else ''}: imported at {rate:,.0f} "
                f"records/s; backfill {seconds:.1f} s = {files / seconds:,.0f} records/s"
            )
    figures["speedup"] = figures["records_per_s_2w"] / figures["records_per_s_1w"]
    return figures


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/backfill-bench"))
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    args.dir.mkdir(parents=True, exist_ok=True)
    figures = measure(Bench(args.dir), args.files)
    if args.json:
        print(json.dumps(figures))
    else:
        print(
            f"{args.files:,} files end to end: 1 worker {figures['records_per_s_1w']:,.0f} "
            f"records/s, 2 workers {figures['records_per_s_2w']:,.0f} records/s "
            f"(speed-up {figures['speedup']:.2f}x)"
        )
    return figures


if __name__ == "__main__":
    main()
