"""Cold start: from `backfill run media-duration` process start to the first record written.

    uv run python -m benchmarks.cold_start                    # 1,000 tiny WAVs
    uv run python -m benchmarks.cold_start --files 200

Registers `--files` tiny WAVs (those of `benchmarks.duration`) with a fresh API (uvicorn on
127.0.0.1, a temp SQLite file), notes the wall clock, starts `python -m ops.cli run
media-duration` as a subprocess against a Prefect server started for the benchmark, and
when it is done reads the API's audit table: the first applied batch's `created_at` minus
the process start is the cold start (interpreter, imports, settings, flow run creation,
first page, first chunk computed and committed). A throwaway run over one file comes first,
so Prefect already knows the flow and the OS has the imports cached, as on a worker that
has run before.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine, text

from benchmarks.duration import make_wavs
from benchmarks.hashing import Bench, local_api, run_cli


def first_write(database_url: str) -> datetime:
    """When the first non-dry-run media-duration batch was committed (audit)."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            value = conn.execute(
                text("SELECT min(created_at) FROM audit WHERE kind = :kind AND NOT dry_run"),
                {"kind": "media-duration"},
            ).scalar()
    finally:
        engine.dispose()
    if value is None:
        raise RuntimeError("no media-duration batch in the audit table")
    if isinstance(value, str):  # SQLite hands back text
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def measure(bench: Bench, files: int = 1000) -> dict[str, float]:
    """Seconds from process start to the first record written, and of the whole run."""
    workdir, log = bench.workdir, bench.log
    media_root = workdir / "media"
    paths = sorted(make_wavs(media_root / "wav", files))
    with bench.prefect() as prefect_url:
        with local_api(workdir) as api:  # warm-up
            api.register(media_root, paths[:1], "audio")
            run_cli(api, media_root, workdir, prefect_url, "media-duration")
        with local_api(workdir) as api:
            api.register(media_root, paths, "audio")
            started = datetime.now(UTC)
            wall, _ = run_cli(api, media_root, workdir, prefect_url, "media-duration")
            first = first_write(api.database_url)
            assert all(d is not None for d in api.durations().values())
    seconds = (first - started).total_seconds()
    log(f"{files} files: first record written after {seconds:.2f} s, run done after {wall:.2f} s")
    return {"files": float(files), "first_record_s": seconds, "wall_s": wall}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/backfill-bench"))
    parser.add_argument("--files", type=int, default=1000)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    measure(Bench(args.dir), args.files)
    print(f"(benchmark took {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
