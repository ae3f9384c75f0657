"""`backfill run media-duration` over short WAV files: records/s, in one run.

    uv run python -m benchmarks.duration                     # 2,000 files (and 6,000)
    uv run python -m benchmarks.duration --files 5000 --dir /tmp/bench

Writes `--files` and 3x as many tiny WAVs (8 kHz mono, about 0.25 s each, kept for the next
run), registers them with a fresh API (uvicorn on 127.0.0.1, a temp SQLite file) and times
`python -m ops.cli run media-duration` as a subprocess against one Prefect server started
for the benchmark. Every duration is checked against frames / rate. Prints:

- in-run records/s: what the run itself reports (first page fetched to last batch posted:
  paging, reading headers, validating, posting every batch to the API);
- wall records/s: files / wall time of the whole command, start-up included;
- marginal records/s: (3N - N) / (time(3N) - time(N)), start-up cancelled.

Target: 2,000 files/s.

`--compressed N` (default 1,000) adds a run over N mp3 (VBR, LAME tag) and m4a (AAC) files:
copies of 8 encodings of 0.5-3.7 s tones made by imageio-ffmpeg's binary, each checked
against its synthesised sample count (exact to the sample: the LAME tag and the mp4 edit
list take the encoder delay and padding off). It prints the in-run records/s: the price
of exactness for lossy formats (a PyAV open and a header check per file, instead of
libsndfile's header read).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import wave
from collections.abc import Sequence
from math import nan
from pathlib import Path

from benchmarks.hashing import Bench, local_api, run_cli, table_value

RATE = 8000


def make_wavs(directory: Path, count: int) -> dict[Path, float]:
    """`count` silent WAVs of 2,000-2,999 frames; returns each file's exact duration."""
    directory.mkdir(parents=True, exist_ok=True)
    durations = {}
    for i in range(count):
        path = directory / f"{i:06d}.wav"
        frames = 2000 + i % 1000
        if not path.exists():
            with wave.open(str(path), "wb") as out:
                out.setnchannels(1)
                out.setsampwidth(2)
                out.setframerate(RATE)
                out.writeframes(b"\x00\x00" * frames)
        durations[path] = frames / RATE
    return durations


#: (samples at 44.1 kHz, ffmpeg output arguments, suffix) of the compressed corpus.
COMPRESSED = [
    (frames, args, suffix)
    for frames in (22_050, 61_111, 103_444, 163_001)
    for args, suffix in (
        (["-c:a", "libmp3lame", "-q:a", "4"], "mp3"),
        (["-c:a", "aac", "-b:a", "96k"], "m4a"),
    )
]


def make_compressed(directory: Path, count: int) -> dict[Path, float]:
    """`count` mp3 and m4a files (copies of the 8 encodings in COMPRESSED); returns each
    file's exact duration (its synthesised sample count / 44,100)."""
    import imageio_ffmpeg

    directory.mkdir(parents=True, exist_ok=True)
    sources = []
    for frames, args, suffix in COMPRESSED:
        encoded = directory / f"source-{frames}.{suffix}"
        if not encoded.exists():
            wav = directory / f"source-{frames}.wav"
            with wave.open(str(wav), "wb") as out:
                out.setnchannels(1)
                out.setsampwidth(2)
                out.setframerate(44_100)
                ramp = bytes(((i * 37) & 0xFF) for i in range(frames * 2))
                out.writeframes(ramp)
            command = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-y"]
            subprocess.run([*command, "-i", str(wav), *args, str(encoded)], check=True)
            wav.unlink()
        sources.append((encoded, frames / 44_100))
    durations = {}
    for i in range(count):
        source, seconds = sources[i % len(sources)]
        path = directory / "files" / f"{i:06d}{source.suffix}"
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            shutil.copyfile(source, path)
        durations[path] = seconds
    return durations


def time_run(
    durations: dict[Path, float], media_root: Path, workdir: Path, prefect_url: str
) -> tuple[float, float]:
    """(wall seconds, in-run records/s) of one `backfill run media-duration`."""
    paths = sorted(durations)
    with local_api(workdir) as api:
        api.register(media_root, paths, "audio")
        seconds, stdout = run_cli(
            api, media_root, workdir, prefect_url, "media-duration", "--batch-size", "1000"
        )
        found = api.durations()
    assert found == {p.relative_to(media_root).as_posix(): d for p, d in durations.items()}
    return seconds, table_value(stdout, "records/s")


def measure(
    bench: Bench, files: int = 2000, repeat: int = 2, compressed_files: int = 1000
) -> dict[str, float]:
    """records/s of `backfill run media-duration` over `files` and 3x as many WAVs: marginal,
    in-run and with start-up. Starts its own Prefect server unless `bench` names one."""
    workdir, log = bench.workdir, bench.log
    media_root = workdir / "media"
    everything = make_wavs(media_root / "wav", 3 * files)
    paths = sorted(everything)
    walls, in_runs = [], []
    with bench.prefect() as prefect_url:
        time_run({paths[0]: everything[paths[0]]}, media_root, workdir, prefect_url)  # warm-up
        for count in (files, 3 * files):
            subset = {p: everything[p] for p in paths[:count]}
            runs = [time_run(subset, media_root, workdir, prefect_url) for _ in range(repeat)]
            wall = min(s for s, _ in runs)
            in_run = max(r for _, r in runs)
            walls.append(wall)
            in_runs.append(in_run)
            log(
                f"{count:6d} files: wall {wall:6.2f} s = {count / wall:7.0f} records/s "
                f"with start-up; in-run {in_run:7.0f} records/s"
            )
        compressed = make_compressed(media_root / "compressed", compressed_files)
        runs = [
            time_run(compressed, media_root, workdir, prefect_url) for _ in range(repeat)
        ] if compressed_files else [(nan, nan)]  # fmt: skip
        compressed_in_run = max(r for _, r in runs)
        log(f"{compressed_files:6d} mp3/m4a files: in-run {compressed_in_run:7.0f} records/s")
    marginal = 2 * files / (walls[1] - walls[0]) if walls[1] > walls[0] else nan
    return {
        "compressed_files": float(compressed_files),
        "compressed_in_run_records_per_s": compressed_in_run,
        "files": float(files),
        "marginal_records_per_s": marginal,
        "in_run_records_per_s": in_runs[1],
        "wall_records_per_s": 3 * files / walls[1],
        "fixed_s": walls[0] - files / marginal,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/backfill-bench"))
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=2, help="Best of this many runs.")
    parser.add_argument("--compressed", type=int, default=1000, help="mp3/m4a files.")
    args = parser.parse_args(argv)

    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    f = measure(Bench(args.dir), args.files, args.repeat, compressed_files=args.compressed)
    marginal = f["marginal_records_per_s"]
    print(f"marginal records/s ({args.files} -> {3 * args.files} files): {marginal:7.0f}")
    print(f"fixed start-up cost: {f['fixed_s']:.2f} s")
    print(f"mp3/m4a in-run records/s: {f['compressed_in_run_records_per_s']:7.0f}")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
