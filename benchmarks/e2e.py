"""End to end over many tiny files: `backfill media import` then `backfill run media-duration`,
with one worker and with two (records/s and the speed-up).

    uv run python -m benchmarks.e2e                       # 100,000 files
    uv run python -m benchmarks.e2e --files 20000         # a smaller corpus

Writes `--files` tiny WAVs (8 kHz mono, about 0.25 s each; kept in `--dir` for the next run),
then for each worker count: a fresh API (uvicorn, a temp SQLite file), the records imported
through the API (`ops.importer`, NDJSON lines), and the backfill timed from process start to
the last batch posted:

  1 worker    one `backfill run media-duration` process
  2 workers   two at once, `--shard-index 0|1 --shard-count 2`: the same split a fanned-out
              run (`shards=2`) gives its two children, started by hand instead of through a
              work pool (no deployment, no pool worker: the pool's own start-up is left out)

Every record must end with the exact duration (frames / rate). Both runs use one Prefect
server started for the benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.duration import make_wavs
from benchmarks.hashing import ROOT, Bench, LocalApi, flow_env, local_api
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


def backfill(
    api: LocalApi, media_root: Path, workdir: Path, prefect_url: str, workers: int
) -> float:
    """Seconds for `workers` concurrent `backfill run media-duration` shard processes."""
    env = flow_env(workdir, prefect_url, api, media_root, COLUMNS="120")
    command = [sys.executable, "-m", "ops.cli", "run", "media-duration", "--batch-size", "1000"]
    if workers > 1:
        shard = ["--shard-count", str(workers), "--shard-index"]
        commands = [[*command, *shard, str(i)] for i in range(workers)]
    else:
        commands = [command]
    started = time.perf_counter()
    procs = [
        subprocess.Popen(c, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for c in commands
    ]
    outputs = [p.communicate(timeout=3600) for p in procs]
    seconds = time.perf_counter() - started
    for proc, (out, err) in zip(procs, outputs, strict=True):
        if proc.returncode != 0:
            raise RuntimeError(f"backfill run failed:\n{out.decode()}\n{err.decode()[-3000:]}")
    return seconds


def measure(bench: Bench, files: int = 100_000) -> dict[str, float]:
    workdir, log = bench.workdir, bench.log
    media_root = workdir / "media"
    log(f"writing {files:,} tiny WAVs (kept for the next run) ...")
    everything = make_wavs(media_root / "wav", files)
    expected = {p.relative_to(media_root).as_posix(): d for p, d in everything.items()}
    figures: dict[str, float] = {"files": float(files)}
    with bench.prefect() as prefect_url:
        for workers in (1, 2):
            with local_api(workdir) as api:
                rate = import_files(api, media_root, everything)
                seconds = backfill(api, media_root, workdir, prefect_url, workers)
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
