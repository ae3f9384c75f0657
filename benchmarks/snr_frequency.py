"""The snr-frequency flow end to end: files/s with 1 and 2 worker processes, and what a cold
run costs.

    uv run python -m benchmarks.snr_frequency                    # 100 and 300 files of 5 s
    uv run python -m benchmarks.snr_frequency --files 200 --seconds 10 --dir /tmp/bench

Writes `3 * --files` tone-in-noise WAVs (44.1 kHz, mono and stereo alternately; kept for
the next run). For each worker count (1, 2) it registers the first N and then all 3N files
with a fresh API (uvicorn on 127.0.0.1, a temp SQLite file) and runs the flow in a new
interpreter (`snr_frequency(workers=W)`) against one Prefect server started for the
benchmark, as a deployment would. Every frequency is checked against the file's tone.
Prints, per worker count:

- in-run files/s: what the run itself reports (first page to last POST, pool start-up
  and warm-up of the workers included);
- marginal files/s: (3N - N) / (time(3N) - time(N)) of the whole command, which cancels
  every fixed cost;
- fixed cost: time(N) - N / marginal, i.e. interpreter, imports, flow start-up, pool.

Then the cold start of one worker process, measured in a fresh interpreter: importing the
compute (and the flow module, which brings Prefect), `warm_up`, and the first file with and
without a warm-up.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from math import nan
from pathlib import Path

import numpy as np

from benchmarks.hashing import (
    Bench,
    LocalApi,
    flow_env,
    last_json,
    local_api,
    run_python,
)
from ops.corpus import write_tone

RATE = 44_100

RUN_SCRIPT = """
import json, resource, sys
from flows.snr_frequency import snr_frequency
report = snr_frequency(workers=int(sys.argv[1]), batch_size=int(sys.argv[2]))
cpu = {who: resource.getrusage(getattr(resource, f"RUSAGE_{who.upper()}"))
       for who in ("self", "children")}
print(json.dumps(report.model_dump(mode="json")
                 | {f"cpu_{who}": u.ru_utime + u.ru_stime for who, u in cpu.items()}))
"""

COLD_SCRIPT = """
import json, sys, time
from pathlib import Path
t0 = time.perf_counter()
from flows.compute.audio import analyse_audio, warm_up
t1 = time.perf_counter()
import flows.snr_frequency
t2 = time.perf_counter()
if sys.argv[1] == "warm":
    warm_up()
t3 = time.perf_counter()
analyse_audio(Path(sys.argv[2]))
t4 = time.perf_counter()
analyse_audio(Path(sys.argv[3]))
t5 = time.perf_counter()
print(json.dumps({"compute_import": t1 - t0, "flow_module_import": t2 - t1,
                  "warm_up": t3 - t2, "first_file": t4 - t3, "second_file": t5 - t4}))
"""


def make_tones(directory: Path, count: int, seconds: float) -> dict[Path, float]:
    """`count` tone-in-noise WAVs; returns each file's tone frequency (Hz)."""
    rng = np.random.default_rng(0)
    tones = {}
    for i in range(count):
        freq = round(float(rng.uniform(100.0, 8000.0)), 1)
        snr = float(rng.uniform(5.0, 35.0))
        path = directory / f"{seconds:g}s" / f"tone-{i:05d}.wav"
        if not path.exists():
            write_tone(
                path, freq=freq, seconds=seconds, rate=RATE, channels=1 + i % 2, snr_db=snr, seed=i
            )
        tones[path] = freq
    return tones


def run_flow(
    api: LocalApi, media_root: Path, workdir: Path, prefect_url: str, workers: int, batch: int
) -> tuple[float, dict[str, object]]:
    """(wall seconds, the run's report) of the flow in a new interpreter."""
    env = flow_env(workdir, prefect_url, api, media_root, PREFECT_LOGGING_LEVEL="WARNING")
    seconds, stdout = run_python(
        "snr-frequency run", "-c", RUN_SCRIPT, str(workers), str(batch), env=env
    )
    report: dict[str, object] = last_json(stdout)
    return seconds, report


def time_run(
    tones: dict[Path, float],
    media_root: Path,
    workdir: Path,
    prefect_url: str,
    workers: int,
    batch: int,
) -> tuple[float, float, float, float]:
    """(wall seconds, in-run files/s, CPU seconds of the flow process, of its workers) of
    one run over `tones`, checked."""
    paths = sorted(tones)
    with local_api(workdir) as api:
        api.register(media_root, paths, "audio")
        seconds, report = run_flow(api, media_root, workdir, prefect_url, workers, batch)
        found = {m.uri: m.frequency for m in api.records()}
    assert report["applied"] == len(paths) and report["failed"] == 0, report
    for path, freq in tones.items():
        measured = found[path.relative_to(media_root).as_posix()]
        assert measured is not None and abs(measured - freq) <= 1.0, (path, measured, freq)
    rate, main_cpu, workers_cpu = (
        report["records_per_second"],
        report["cpu_self"],
        report["cpu_children"],
    )
    assert isinstance(rate, float) and isinstance(main_cpu, float)
    assert isinstance(workers_cpu, float)
    return seconds, rate, main_cpu, workers_cpu


def cold_start(first: Path, second: Path, mode: str) -> dict[str, float]:
    _, stdout = run_python("cold start", "-c", COLD_SCRIPT, mode, str(first), str(second))
    result: dict[str, float] = last_json(stdout)
    return result


def measure(
    bench: Bench,
    files: int = 100,
    seconds: float = 5.0,
    batch: int = 100,
    repeat: int = 1,
    cold_run: bool = True,
) -> dict[str, float]:
    """files/s of the flow with 1 and 2 workers (marginal, N -> 3N files, and in-run), each
    worker count's fixed cost and the speed-up. Starts its own Prefect server unless given
    `prefect_url`; `cold_run` also times a run over one file after the first."""
    workdir, log = bench.workdir, bench.log
    media_root = workdir / "media"
    log(f"writing/checking {3 * files} WAVs of {seconds:g} s under {media_root} ...")
    everything = make_tones(media_root / "tones", 3 * files, seconds)
    paths = sorted(everything)
    figures: dict[str, float] = {"files": float(files), "seconds_per_file": seconds}
    with bench.prefect() as prefect_url:
        one = {paths[0]: everything[paths[0]]}
        first, *_ = time_run(one, media_root, workdir, prefect_url, 2, batch)
        log(f"first run ever (1 file, Prefect registers the flow): {first:.2f} s")
        if cold_run:
            cold, *_ = time_run(one, media_root, workdir, prefect_url, 2, batch)
            figures["cold_run_1_file_s"] = cold
            log(f"cold run over 1 file, 2 workers (whole command): {cold:.2f} s")
        for workers in (1, 2):
            walls, in_runs = [], []
            for count in (files, 3 * files):
                subset = {p: everything[p] for p in paths[:count]}
                runs = [
                    time_run(subset, media_root, workdir, prefect_url, workers, batch)
                    for _ in range(repeat)
                ]
                wall, in_run, main_cpu, workers_cpu = min(runs)
                walls.append(wall)
                in_runs.append(in_run)
                log(
                    f"{workers} worker(s), {count:5d} files: wall {wall:6.2f} s "
                    f"({count / wall:5.1f} files/s), in-run {in_run:5.1f} files/s; "
                    f"CPU s: flow process {main_cpu:.2f}, workers {workers_cpu:.2f}"
                )
            marginal = 2 * files / (walls[1] - walls[0]) if walls[1] > walls[0] else nan
            fixed = walls[0] - files / marginal
            log(f"{workers} worker(s): marginal {marginal:5.1f} files/s, fixed cost {fixed:.2f} s")
            figures[f"marginal_files_per_s_{workers}w"] = marginal
            figures[f"in_run_files_per_s_{workers}w"] = in_runs[1]
            figures[f"fixed_s_{workers}w"] = fixed
    figures["speedup"] = figures["marginal_files_per_s_2w"] / figures["marginal_files_per_s_1w"]
    return figures


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/backfill-bench"))
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=5.0, help="Length of each file.")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=1, help="Best of this many runs.")
    args = parser.parse_args(argv)

    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    figures = measure(Bench(args.dir), args.files, args.seconds, args.batch_size, args.repeat)
    print(f"speed-up 2 workers / 1 worker: {figures['speedup']:.2f}x")

    paths = sorted(make_tones(args.dir / "media" / "tones", 3 * args.files, args.seconds))
    for mode in ("warm", "cold"):
        costs = cold_start(paths[0], paths[1], mode)
        print(f"worker start-up, {mode}: " + ", ".join(f"{k} {v:.3f} s" for k, v in costs.items()))
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
