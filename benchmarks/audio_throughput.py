"""Throughput of `analyse_audio` and the cost of `probe`, on files this script writes.

    uv run python benchmarks/audio_throughput.py [--files 40] [--seconds 5] [--rate 44100]

Prints: the cold first-call cost in a fresh interpreter (imports, then `warm_up`, then the
first and second file); files/s analysed by one process and by a 2-process
`ProcessPoolExecutor` (spawned workers, `warm_up` in the initializer, pool start-up timed
separately); and the per-file time of `probe` on the soundfile path (WAV/FLAC/OGG) and on
the ffmpeg path (MP4).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.hashing import last_json, run_python  # noqa: E402
from flows.compute.audio import analyse_audio, warm_up  # noqa: E402
from flows.compute.probe import ffmpeg_exe, probe  # noqa: E402


def write_files(
    directory: Path, count: int, seconds: float, rate: int, channels: int
) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    frames = round(seconds * rate)
    t = np.arange(frames) / rate
    for index in range(count):
        frequency = float(rng.uniform(50, min(8000, 0.45 * rate)))
        tone = np.sin(2 * np.pi * frequency * t)[:, None]
        noise = rng.normal(0, 0.1, (frames, channels))
        signal = 0.4 * (tone + noise) / (1 + 0.5)
        path = directory / f"tone-{index:03d}.wav"
        sf.write(path, signal, rate, subtype="PCM_16")
        paths.append(path)
    return paths


COLD_SCRIPT = """
import json, sys, time
t0 = time.perf_counter()
from flows.compute.audio import analyse_audio, warm_up
t1 = time.perf_counter()
if sys.argv[1] == "warm":
    warm_up()
t2 = time.perf_counter()
analyse_audio(__import__("pathlib").Path(sys.argv[2]))
t3 = time.perf_counter()
analyse_audio(__import__("pathlib").Path(sys.argv[3]))
t4 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "warm_up": t2 - t1, "first": t3 - t2, "second": t4 - t3}))
"""


def cold_costs(first: Path, second: Path, mode: str) -> dict[str, float]:
    _, stdout = run_python("cold start", "-c", COLD_SCRIPT, mode, str(first), str(second))
    result: dict[str, float] = last_json(stdout)
    return result


def analyse_one(path: str) -> float:
    return analyse_audio(Path(path)).frequency


def per_call_us(function: Callable[[Path], object], path: Path, repeat: int) -> float:
    function(path)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function(path)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=int, default=44_100)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        paths = write_files(directory, args.files, args.seconds, args.rate, args.channels)
        print(
            f"{args.files} files x {args.seconds:g} s, {args.rate} Hz, {args.channels} ch, "
            f"16-bit WAV; {os.cpu_count()} CPUs"
        )

        for mode in ("cold", "warm"):
            costs = cold_costs(paths[0], paths[1], mode)
            print(
                f"fresh process ({mode:4}): import {costs['import'] * 1e3:6.0f} ms, "
                f"warm_up {costs['warm_up'] * 1e3:6.0f} ms, first file "
                f"{costs['first'] * 1e3:6.1f} ms, second file {costs['second'] * 1e3:6.1f} ms"
            )

        warm_up()
        start = time.perf_counter()
        for path in paths:
            analyse_audio(path)
        elapsed = time.perf_counter() - start
        print(
            f"1 process : {len(paths) / elapsed:7.1f} files/s "
            f"({elapsed / len(paths) * 1e3:.1f} ms/file, "
            f"{len(paths) * args.seconds / elapsed:.0f}x real time)"
        )

        context = multiprocessing.get_context("spawn")
        start = time.perf_counter()
        with ProcessPoolExecutor(args.workers, mp_context=context, initializer=warm_up) as pool:
            list(pool.map(analyse_one, [str(paths[0])] * args.workers))  # start + warm workers
            ready = time.perf_counter()
            list(pool.map(analyse_one, [str(p) for p in paths]))
            done = time.perf_counter()
        print(
            f"{args.workers} processes: {len(paths) / (done - ready):7.1f} files/s "
            f"(pool start-up incl. warm_up {(ready - start) * 1e3:.0f} ms, not counted)"
        )

        print("probe (median per file):")
        tone = np.sin(2 * np.pi * 440 * np.arange(5 * args.rate) / args.rate) * 0.5
        for ext in ("wav", "flac", "ogg", "mp3"):
            path = directory / f"probe.{ext}"
            sf.write(path, tone, args.rate, format="MP3" if ext == "mp3" else None)
            print(f"  soundfile {ext:4}: {per_call_us(probe, path, 300):8.0f} us")
        mp4 = directory / "probe.mp4"
        subprocess.run(
            [
                ffmpeg_exe(), "-v", "error", "-y",
                "-f", "lavfi", "-i", "testsrc=size=64x48:rate=10:duration=5",
                "-f", "lavfi", "-i", "sine=frequency=440:duration=5",
                "-c:v", "libx264", "-c:a", "aac", "-shortest", str(mp4),
            ],
            check=True,
        )  # fmt: skip
        print(f"  ffmpeg    mp4 : {per_call_us(probe, mp4, 30):8.0f} us")
        start = time.perf_counter()
        analyse_audio(mp4)
        print(
            f"analyse_audio mp4 (ffmpeg decode, 5 s): {(time.perf_counter() - start) * 1e3:.0f} ms"
        )


if __name__ == "__main__":
    main()
