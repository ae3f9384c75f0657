"""Orchestration overhead: the media-duration flow vs the same work in a plain loop.

    uv run python -m benchmarks.overhead                      # 10,000 records, best of 3
    uv run python -m benchmarks.overhead --records 2000 --repeat 1

Registers N tiny WAVs (8 kHz mono, about 0.3 s; the files of `benchmarks.duration`) with a
fresh API (uvicorn on 127.0.0.1, a temp SQLite file), then, in one new interpreter pointed at
one Prefect server started for the benchmark, alternately:

- the plain loop: page `/backfills/media-duration/pending` by keyset, compute each item with
  the flow's own spec (`flows.spec.run_item(MEDIA_DURATION, job)`: open the file under the
  media root, read its header with soundfile, validate), and POST the results in batches of
  the flow's default batch size through `BackfillClient`; one thread, no Prefect;
- the flow: `flows.media_duration.media_duration(limit=N)` called in that interpreter, i.e.
  `run_backfill` in a Prefect flow run: coverage, paging, chunk tasks on the thread pool task
  runner, compute pool, progress and summary artifacts, events and logs to the server.

Between passes every duration is reset to NULL in the database so the same N records are
pending again. One warm-up pass of each comes first (Prefect registers the flow). Flow-run
heartbeats are off, as in `backfill run` (a deployment's heartbeat thread adds 0-1 s per run
when the run ends). Overhead = (flow - loop) / loop on the best of `--repeat` of each;
target < 15 % at the default batch size.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from benchmarks.duration import make_wavs
from benchmarks.hashing import Bench, flow_env, last_json, local_api, run_python


def _child(database_url: str, records: int, repeat: int) -> dict[str, Any]:
    """Runs in the measuring interpreter (Prefect settings come from its environment)."""
    import inspect

    from prefect.settings import temporary_settings
    from sqlalchemy import create_engine, text

    from api.schemas import MAX_PAGE_LIMIT, FailureItem
    from flows.client import BackfillClient
    from flows.media_duration import MEDIA_DURATION, media_duration
    from flows.settings import load_settings
    from flows.spec import BackfillParams, Job, run_item

    settings = load_settings()
    batch = int(inspect.signature(media_duration.fn).parameters["batch_size"].default)
    params = BackfillParams(batch_size=batch)
    kind = MEDIA_DURATION.kind
    engine = create_engine(database_url)

    def reset() -> None:
        with engine.begin() as conn:
            conn.execute(text("UPDATE media SET duration = NULL"))

    def loop(limit: int) -> tuple[float, int]:
        started = time.perf_counter()
        applied = 0
        with BackfillClient.from_settings(settings) as client:  # a new idempotency scope
            after_id, left = 0, limit
            while left > 0:
                page = client.pending(kind, after_id=after_id, limit=min(MAX_PAGE_LIMIT, left))
                items = page.items[:left]
                for k in range(0, len(items), batch):
                    chunk = items[k : k + batch]
                    outcomes = [run_item(MEDIA_DURATION, Job(i, params, settings)) for i in chunk]
                    results = [o.result for o in outcomes if o.result is not None]
                    failures = [
                        FailureItem(record_id=o.record_id, error=o.error)
                        for o in outcomes
                        if o.error is not None
                    ]
                    if results:
                        applied += client.post_results(kind, results).applied
                    if failures:
                        client.post_failures(kind, failures)
                left -= len(items)
                if page.next_after_id is None or not items:
                    break
                after_id = page.next_after_id
        return time.perf_counter() - started, applied

    def flow(limit: int) -> tuple[float, int]:
        started = time.perf_counter()
        report = media_duration(limit=limit)
        return time.perf_counter() - started, report.applied

    loops: list[float] = []
    flows: list[float] = []
    with temporary_settings(updates={"flows.heartbeat_frequency": None}):
        for warm_up in (loop, flow):
            reset()
            warm_up(batch)
        for _ in range(repeat):
            for run, out in ((loop, loops), (flow, flows)):
                reset()
                seconds, applied = run(records)
                assert applied == records, (run.__name__, applied, records)
                out.append(seconds)
    engine.dispose()
    return {"batch_size": batch, "loop_s": loops, "flow_s": flows}


def measure(bench: Bench, records: int = 10_000, repeat: int = 3) -> dict[str, float]:
    """Seconds of the flow and of the plain loop over `records` records (best of `repeat`),
    and the overhead in %. Starts its own Prefect server unless `bench` names one."""
    workdir, log = bench.workdir, bench.log
    media_root = workdir / "media"
    paths = sorted(make_wavs(media_root / "wav", records))
    with ExitStack() as stack:
        prefect_url = stack.enter_context(bench.prefect())
        api = stack.enter_context(local_api(workdir))
        api.register(media_root, paths, "audio")
        env = flow_env(
            workdir, prefect_url, api, media_root, PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL="WARNING"
        )
        child = ["-m", "benchmarks.overhead", "--child", api.database_url]
        _, stdout = run_python(
            "overhead run", *child, "--records", str(records), "--repeat", str(repeat), env=env
        )
    result = last_json(stdout)
    loop_s, flow_s = min(result["loop_s"]), min(result["flow_s"])
    for name, runs in (("loop", result["loop_s"]), ("flow", result["flow_s"])):
        log(f"{name}: {records} records in " + ", ".join(f"{s:.2f}" for s in runs) + " s")
    return {
        "records": float(records),
        "batch_size": float(result["batch_size"]),
        "loop_s": loop_s,
        "flow_s": flow_s,
        "loop_records_per_s": records / loop_s,
        "flow_records_per_s": records / flow_s,
        "overhead_pct": 100 * (flow_s - loop_s) / loop_s,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/backfill-bench"))
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3, help="Best of this many runs.")
    parser.add_argument("--child", metavar="DATABASE_URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child, args.records, args.repeat)))
        return
    f = measure(Bench(args.dir), args.records, args.repeat)
    print(
        f"{args.records:,} records, batch size {f['batch_size']:.0f}: "
        f"plain loop {f['loop_s']:.2f} s, flow {f['flow_s']:.2f} s, "
        f"overhead {f['overhead_pct']:+.1f} % (target < 15 %)"
    )


if __name__ == "__main__":
    main()
