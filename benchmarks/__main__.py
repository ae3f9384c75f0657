"""The benchmark suite: every figure of docs/performance.md, against baselines measured in
the same run; prints a table and writes it as JSON.

    uv run python -m benchmarks                  # full sizes (roughly 5-10 min on 2 cores)
    uv run python -m benchmarks --quick          # small sizes, to check it works (~3 min)
    uv run python -m benchmarks --only a,c --json /tmp/bench.json

Rows: a. API batch apply vs direct database writes (SQLite, PostgreSQL); b. file-hashing end
to end vs openssl; c. the legacy row-by-row ORM script vs the API path (SQLite, PostgreSQL);
d. media-duration records/s; e. snr-frequency files/s with 1 and 2 workers; f. orchestration
overhead (flow vs plain loop); g. cold start to the first record written; h. scale: bulk
import rate, and page/write/coverage cost, `backfill status` and API memory at 10k and 1M
records (SQLite, PostgreSQL); i. end to end over 100k tiny files (import, then
media-duration) with 1 and 2 workers.

PostgreSQL: `$BACKFILL_BENCH_PG_URL` (a disposable database: it is migrated and its media
table emptied), else a throwaway cluster when initdb/pg_ctl are installed, else those rows
are marked skipped. One Prefect server serves every row that runs a flow.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from math import isfinite
from pathlib import Path

from rich.console import Console

from benchmarks import (
    api_apply,
    cold_start,
    duration,
    e2e,
    hashing,
    import_rate,
    legacy_row_by_row,
    overhead,
    scale,
)
from benchmarks import snr_frequency as snr
from benchmarks.hashing import Bench
from benchmarks.pg import Unavailable, postgres
from benchmarks.report import Row, fmt, load_average, machine, met, print_report, write_json

ROOT = Path(__file__).resolve().parents[1]
KEYS = "abcdefghi"
#: Short names for the table (a row adds its backend or worker count).
NAMES = {
    "a": "API apply vs direct writes",
    "b": "file-hashing vs openssl",
    "c": "API vs legacy row-by-row",
    "d": "media-duration",
    "e": "snr-frequency",
    "f": "orchestration overhead",
    "g": "cold start",
    "h": "scale: import, 10k -> 1M",
    "i": "end to end, tiny files",
}
TITLES = {
    "a": "API batch apply vs direct DB writes",
    "b": "file-hashing vs openssl dgst -sha256",
    "c": "API path vs legacy row-by-row ORM script",
    "d": "media-duration records/s",
    "e": "snr-frequency files/s",
    "f": "orchestration overhead (flow vs plain loop)",
    "g": "cold start to first record written",
    "h": "scale: bulk import rate; page, write, coverage at 10k and 1M records",
    "i": "end to end: import then media-duration over tiny files, 1 and 2 workers",
}


@dataclass(frozen=True)
class Sizes:
    api_rows: int = 100_000
    legacy_rows: int = 20_000
    hash_small_gib: float = 2.0
    hash_large_gib: float = 6.0
    hash_repeat: int = 2
    duration_files: int = 2000
    duration_repeat: int = 2
    snr_files: int = 100
    snr_seconds: float = 5.0
    snr_repeat: int = 1
    overhead_records: int = 10_000
    overhead_repeat: int = 3
    cold_files: int = 1000
    import_records: int = 100_000
    scale_sizes: tuple[int, int] = (10_000, 1_000_000)
    scale_runs: int = 31
    e2e_files: int = 100_000


QUICK = Sizes(
    api_rows=5000,
    legacy_rows=1000,
    hash_small_gib=0.125,
    hash_large_gib=0.375,
    hash_repeat=1,
    duration_files=500,
    duration_repeat=1,
    snr_files=10,
    snr_seconds=2.0,
    overhead_records=2000,
    overhead_repeat=1,
    cold_files=500,
    import_records=10_000,
    scale_sizes=(10_000, 20_000),
    scale_runs=5,
    e2e_files=2000,
)


def ok(value: float | None) -> bool:
    return value is not None and isfinite(value)


def marginal_or_in_run(marginal: float, in_run: float) -> tuple[float, str]:
    """The marginal rate; at sizes too small for it (the larger run was not slower), the
    rate the larger run reported itself."""
    if ok(marginal) and marginal > 0:
        return marginal, "marginal"
    return in_run, "in-run (marginal not measurable here)"


class Suite:
    """What the rows share: sizes, a work dir, one Prefect server, one PostgreSQL."""

    def __init__(self, sizes: Sizes, workdir: Path, stack: ExitStack, console: Console) -> None:
        self.sizes, self.workdir, self.stack, self.console = sizes, workdir, stack, console
        self._prefect: str | None = None
        self._pg: tuple[str, str] | Unavailable | None = None

    def log(self, message: str) -> None:
        self.console.print(f"  {message}", style="dim", markup=False, highlight=False)

    @property
    def prefect_url(self) -> str:
        if self._prefect is None:
            self.log("starting a Prefect server for the benchmarks ...")
            self._prefect = self.stack.enter_context(hashing.prefect_server(self.workdir))
        return self._prefect

    @property
    def bench(self) -> Bench:
        """Where a row's benchmark runs: the suite's work dir, Prefect server and log."""
        return Bench(self.workdir, self.prefect_url, self.log)

    def postgres(self) -> tuple[str, str]:
        """(URL, where from), started once; raises `Unavailable` every time if it cannot."""
        if self._pg is None:
            try:
                self._pg = self.stack.enter_context(postgres())
            except Unavailable as exc:
                self._pg = exc
        if isinstance(self._pg, Unavailable):
            raise self._pg
        return self._pg

    # --- the rows ---

    def databases(self, key: str, unit: str) -> Iterator[tuple[Row, str | None]]:
        """A row per backend and its database URL (None: a temp SQLite file); a PostgreSQL
        row that cannot run is yielded with url None and met "skipped"."""
        yield Row(key, f"{NAMES[key]}, SQLite", unit=unit, baseline_unit=unit), None
        row = Row(key, f"{NAMES[key]}, PostgreSQL", unit=unit, baseline_unit=unit)
        try:
            url, origin = self.postgres()
        except Unavailable as exc:
            row.met, row.notes = "skipped", str(exc)
            yield row, None
            return
        row.notes = f"{origin}; "
        yield row, url

    def api_vs(
        self,
        key: str,
        baseline: str,
        ratio: float,
        measure: Callable[[str | None, int], dict[str, float]],
        rows: int,
        notes: Callable[[dict[str, float]], str],
    ) -> Iterator[Row]:
        """Rows a and c: the API path against `baseline` (a figure of `measure(url, rows)`)
        on each database; met when the ratio is at least `ratio`."""
        for row, url in self.databases(key, "rows/s"):
            row.target = f"API >= {ratio:g}x {baseline}"
            if row.met != "skipped":
                f = measure(url, rows)
                row.figure, row.baseline = f["api_rows_per_s"], f[f"{baseline}_rows_per_s"]
                row.ratio, row.met, row.details = f["ratio"], met(f["ratio"] >= ratio), f
                row.notes += notes(f)
                self.log(
                    f"{row.name}: {fmt(row.figure, 'rows/s')} vs {fmt(row.baseline, 'rows/s')}"
                )
            yield row

    def a(self) -> Iterator[Row]:
        n = self.sizes.api_rows
        return self.api_vs(
            "a",
            "direct",
            0.5,
            api_apply.measure,
            n,
            lambda f: (
                f"{n:,} duration updates, batches of 1,000; direct = SQLAlchemy "
                f"executemany; driver's own executemany {fmt(f['driver_rows_per_s'], 'rows/s')} "
                f"(API = {f['driver_ratio']:.2f}x of it)"
            ),
        )

    def c(self) -> Iterator[Row]:
        n = self.sizes.legacy_rows
        return self.api_vs(
            "c",
            "legacy",
            5,
            legacy_row_by_row.compare,
            n,
            lambda f: (
                f"{n:,} records; legacy = ORM load, set, commit per row; "
                f"API = BackfillClient batches of {f['batch']:.0f}"
            ),
        )

    def b(self) -> Iterator[Row]:
        s = self.sizes
        f = hashing.measure(self.bench, s.hash_small_gib, s.hash_large_gib, s.hash_repeat)
        flow, how = marginal_or_in_run(f["flow_mib_per_s"], f["flow_in_run_mib_per_s"])
        openssl = f["openssl_mib_per_s"] if how == "marginal" else f["large_mib"] / f["openssl_s"]
        ratio = flow / openssl
        yield Row(
            "b",
            NAMES["b"],
            figure=flow,
            unit="MiB/s",
            baseline=openssl,
            baseline_unit="MiB/s",
            ratio=ratio,
            target="flow >= 1.5x openssl",
            met=met(ratio >= 1.5),
            notes=f"{how}, {f['small_mib'] / 1024:g} -> {f['large_mib'] / 1024:g} GiB of "
            f"16 MiB files, page cache warm; fixed cost flow {fmt(f['flow_fixed_s'], 's')}, "
            f"openssl {fmt(f['openssl_fixed_s'], 's')}",
            details=f,
        )

    def d(self) -> Iterator[Row]:
        s = self.sizes
        f = duration.measure(self.bench, s.duration_files, s.duration_repeat)
        in_run = f["in_run_records_per_s"]
        figure, how = marginal_or_in_run(f["marginal_records_per_s"], in_run)
        n = s.duration_files
        yield Row(
            "d",
            NAMES["d"],
            figure=figure,
            unit="rec/s",
            target=">= 2,000 rec/s",
            met=met(figure >= 2000),
            notes=f"{how}, {n:,} -> {3 * n:,} tiny WAVs, `backfill run`; end to end (process "
            f"start to exit) {f['wall_records_per_s']:,.0f} rec/s; in-run {in_run:,.0f} rec/s; "
            f"mp3/m4a (exact, verified) in-run {f['compressed_in_run_records_per_s']:,.0f} rec/s",
            details=f,
        )

    def e(self) -> Iterator[Row]:
        s = self.sizes
        f = snr.measure(self.bench, s.snr_files, s.snr_seconds, repeat=s.snr_repeat, cold_run=False)
        sizes = f"{s.snr_files} -> {3 * s.snr_files} WAVs of {s.snr_seconds:g} s"
        rates = {
            w: marginal_or_in_run(f[f"marginal_files_per_s_{w}w"], f[f"in_run_files_per_s_{w}w"])
            for w in (1, 2)
        }
        if rates[1][1] != rates[2][1]:  # compare like with like
            rates = {w: (f[f"in_run_files_per_s_{w}w"], "in-run") for w in (1, 2)}
        for workers in (1, 2):
            rate, how = rates[workers]
            yield Row(
                "e",
                f"{NAMES['e']}, {workers} worker{'s' if workers > 1 else ''}",
                figure=rate,
                unit="files/s",
                baseline=rates[1][0] if workers == 2 else None,
                baseline_unit="files/s",
                ratio=rate / rates[1][0] if workers == 2 else None,
                notes=f"{how}, {sizes}; in-run {f[f'in_run_files_per_s_{workers}w']:.1f} "
                f"files/s; fixed cost {fmt(f[f'fixed_s_{workers}w'], 's')}"
                + ("; baseline = 1 worker, ratio = speed-up" if workers == 2 else ""),
                details=f if workers == 2 else {},
            )

    def f(self) -> Iterator[Row]:
        s = self.sizes
        f = overhead.measure(self.bench, s.overhead_records, s.overhead_repeat)
        yield Row(
            "f",
            NAMES["f"],
            figure=f["flow_s"],
            unit="s",
            baseline=f["loop_s"],
            baseline_unit="s",
            ratio=f["flow_s"] / f["loop_s"],
            target="overhead < 15 %",
            met=met(f["overhead_pct"] < 15),
            notes=f"overhead {f['overhead_pct']:+.0f} %; media-duration over "
            f"{s.overhead_records:,} tiny WAVs, batch size {f['batch_size']:.0f}, "
            f"best of {s.overhead_repeat}",
            details=f,
        )

    def g(self) -> Iterator[Row]:
        s = self.sizes
        f = cold_start.measure(self.bench, s.cold_files)
        yield Row(
            "g",
            NAMES["g"],
            figure=f["first_record_s"],
            unit="s",
            notes=f"`backfill run media-duration` over {s.cold_files:,} files: process start "
            f"to first batch committed (audit); whole run {f['wall_s']:.1f} s",
            details=f,
        )

    def h(self) -> Iterator[Row]:
        s = self.sizes
        small, large = s.scale_sizes
        for row, url in self.databases("h", "rec/s"):
            row.name = row.name.replace("10k -> 1M", f"{small:,} -> {large:,}")
            row.target = ">= 20,000 rec/s import; cost ratio <= 1.3"
            if row.met == "skipped":
                yield row
                continue
            tmp = Path(tempfile.mkdtemp(prefix="scale-", dir=self.workdir))
            try:
                url_for = _scale_urls(url, tmp)
                data = tmp / "records.ndjson"
                import_rate.write_ndjson(data, s.import_records)
                imp = import_rate.measure(url_for(s.import_records), data, s.import_records, tmp)
                costs = scale.run(row.name, url_for, [small, large], tmp, s.scale_runs)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            lo, hi = costs
            ratios = {k: hi[k] / lo[k] for k in SCALE_COSTS}
            row.figure = imp["import_records_per_s"]
            row.met = met(row.figure >= 20_000 and max(ratios.values()) <= 1.3)
            row.notes += (
                f"import of {s.import_records:,} NDJSON records (re-import "
                f"{imp['reimport_records_per_s']:,.0f} rec/s; CPU per 1,000: client "
                f"{imp['import_client_cpu_ms_per_1000']:.0f} ms, server "
                f"{imp['import_server_cpu_ms_per_1000']:.0f} ms); "
                + "; ".join(
                    f"{k.removesuffix('_ms')} {lo[k]:.1f} -> {hi[k]:.1f} ms ({ratios[k]:.2f}x)"
                    for k in ratios
                )
                + f"; `backfill status` at {large:,}: {hi['status_s']:.2f} s (venv script; CPU "
                f"{hi['status_cpu_s']:.2f} s), {hi['status_uv_s']:.2f} s (uv run); load average "
                f"{hi['load_before']:.1f}; API RSS {lo['api_rss_mib']:.0f} -> "
                f"{hi['api_rss_mib']:.0f} MiB"
            )
            row.details = imp | {f"{k}_{int(c['records'])}": v for c in costs for k, v in c.items()}
            self.log(f"{row.name}: import {fmt(row.figure, 'rec/s')}")
            yield row

    def i(self) -> Iterator[Row]:
        n = self.sizes.e2e_files
        f = e2e.measure(self.bench, n)
        for workers in (1, 2):
            rate = f[f"records_per_s_{workers}w"]
            yield Row(
                "i",
                f"{NAMES['i']}, {workers} worker{'s' if workers > 1 else ''}",
                figure=rate,
                unit="rec/s",
                baseline=f["records_per_s_1w"] if workers == 2 else None,
                baseline_unit="rec/s",
                ratio=f["speedup"] if workers == 2 else None,
                notes=f"{n:,} tiny WAVs, `prefect deployment run media-duration/adhoc "
                f"--param shards={workers} --watch` over {workers} pool worker(s), to exit "
                f"({f[f'seconds_{workers}w']:.1f} s), after an import at "
                f"{f[f'import_records_per_s_{workers}w']:,.0f} rec/s"
                + (
                    "; the parent fans out into two shard runs that either worker takes; "
                    "baseline = 1 worker, ratio = speed-up"
                    if workers == 2
                    else ""
                ),
                details=f if workers == 2 else {},
            )


#: The per-record costs of row h, whose ratio (largest / smallest size) must stay <= 1.3.
SCALE_COSTS = ("page_ms", "page_mid_ms", "write_ms", "coverage_ms")


def _scale_urls(pg_url: str | None, tmp: Path) -> Callable[[int], str]:
    """A fresh database per size: a SQLite file in `tmp`, or a new database on the server."""
    if pg_url is None:
        return lambda n: f"sqlite:///{tmp}/scale-{n}-{time.time_ns()}.db"
    return lambda n: scale._database(pg_url, n)


def _rows(suite: Suite, key: str) -> list[Row]:
    runner: Callable[[], Iterator[Row]] = getattr(suite, key)
    rows: list[Row] = []
    started = time.perf_counter()
    try:
        for row in runner():  # rows done before a failure are kept
            rows.append(row)
    except Exception as exc:  # one broken row must not lose the others
        suite.console.print(traceback.format_exc(limit=3), markup=False, style="red")
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        rows.append(Row(key, NAMES[key], met="error", notes=reason))
    for row in rows:
        row.seconds = round(time.perf_counter() - started, 1)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--quick", action="store_true", help="small sizes, to check (~3 min)")
    parser.add_argument("--only", default=KEYS, help="rows to run, e.g. a,c (default: all)")
    parser.add_argument("--json", type=Path, default=ROOT / "var" / "benchmarks.json")
    parser.add_argument(
        "--dir", type=Path, default=Path("/tmp/backfill-bench"), help="media files, kept"
    )
    parser.add_argument(
        "--e2e-files",
        type=int,
        help="tiny files of row i (default 100,000; 2,000 with --quick)",
    )
    parser.add_argument(
        "--scale-max",
        type=int,
        help="largest corpus of row h (default 1,000,000; 20,000 with --quick)",
    )
    args = parser.parse_args(argv)
    keys = [k for k in KEYS if k in args.only.replace(",", "").lower()]
    unknown = set(args.only.replace(",", "").lower()) - set(KEYS)
    if unknown or not keys:
        parser.error(f"--only takes letters of {','.join(KEYS)}")
    sizes = QUICK if args.quick else Sizes()
    if args.e2e_files is not None:
        sizes = replace(sizes, e2e_files=args.e2e_files)
    if args.scale_max is not None:
        sizes = replace(sizes, scale_sizes=(sizes.scale_sizes[0], args.scale_max))
    args.dir.mkdir(parents=True, exist_ok=True)

    console = Console()
    if not console.is_terminal:  # a log file: wide enough for the table
        console = Console(width=160)
    info = machine()
    console.print(
        f"{'quick' if args.quick else 'full'} run of {','.join(keys)} on {info['cpu_count']} "
        f"CPUs ({info['cpu_model']}), load average {info['load_average_before']}"
    )
    started = time.perf_counter()
    rows: list[Row] = []
    with ExitStack() as stack:
        suite = Suite(sizes, args.dir, stack, console)
        for key in keys:
            console.rule(f"{key}. {TITLES[key]}", align="left")
            rows += _rows(suite, key)
    info["load_average_after"] = load_average()
    info["seconds"] = round(time.perf_counter() - started, 1)
    console.print()
    print_report(rows, info, console)
    options = {"quick": args.quick, "only": keys, "sizes": asdict(sizes)}
    write_json(args.json, rows, info, options)
    console.print(f"took {info['seconds']:.0f} s; wrote {args.json}")
    return 1 if any(r.met == "error" for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
