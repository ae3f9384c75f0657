"""`backfill run file-hashing` vs `openssl dgst -sha256` on the same files, in one run.

    uv run python -m benchmarks.hashing                      # 2 GiB and 6 GiB of 16 MiB files
    uv run python -m benchmarks.hashing --small-gib 1 --large-gib 3 --dir /tmp/bench

Writes 16 MiB random files under `--dir` (kept for the next run), reads them all once so the
page cache is warm, then hashes the first `small` GiB and all `large` GiB both ways:

- openssl: `openssl dgst -sha256 FILE...`, one process;
- the flow: a fresh API (uvicorn on 127.0.0.1, a temp SQLite file) with the files registered,
  then `python -m ops.cli run file-hashing` as a subprocess, timed end to end (interpreter
  start, imports, the flow run, every POST); it reports to one Prefect server started for the
  benchmark, as a deployment would. Every digest is checked against openssl's.

Each timing is the best of `--repeat` (default 2). Marginal throughput = (large - small) /
(time(large) - time(small)), which cancels start-up; the fixed start-up cost is what is left
of time(small). Target: flow >= 1.5x openssl (both cores hashing, the flow never waiting on
the API while there is hashing to do). The machine's load average is printed: other work on
the same cores takes from the two-thread flow, not from single-threaded openssl.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from math import nan
from pathlib import Path
from typing import Any

import httpx

from api.schemas import MediaIn, MediaPublic, MediaType
from flows.client import BackfillClient

ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20
FILE_MIB = 16


@dataclass
class LocalApi:
    """A fresh API over a temp SQLite database, with an admin token."""

    url: str
    token: str
    database_url: str

    def register(self, root: Path, paths: Sequence[Path], media_type: MediaType) -> None:
        with BackfillClient(self.url, self.token) as client:
            for start in range(0, len(paths), 1000):
                items = [
                    MediaIn(
                        uri=p.relative_to(root).as_posix(),
                        media_type=media_type,
                        size_bytes=p.stat().st_size,
                    )
                    for p in paths[start : start + 1000]
                ]
                result = client.register_media(items)
                assert all(i.status == "created" for i in result.items), result

    def records(self) -> list[MediaPublic]:
        found: list[MediaPublic] = []
        with BackfillClient(self.url, self.token) as client:
            after = 0
            while True:
                page = client.list_media(after_id=after)
                found += page.items
                if page.next_after_id is None:
                    return found
                after = page.next_after_id

    def hashes(self) -> dict[str, str | None]:
        return {m.uri: m.hash for m in self.records()}

    def durations(self) -> dict[str, float | None]:
        return {m.uri: m.duration for m in self.records()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    """Wait for `url` to answer 200; fail with the server's log if it dies or takes too long."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up:\n{log.read_text()[-2000:]}")


@contextmanager
def local_api(workdir: Path) -> Iterator[LocalApi]:
    """Migrate a new database, create a token, serve it; stop and delete it afterwards."""
    from api.migrate import upgrade
    from api.services.tokens import create_token

    tmp = Path(tempfile.mkdtemp(prefix="api-", dir=workdir))
    url = f"sqlite:///{tmp / 'bench.db'}"
    upgrade(url)
    token = create_token(name="bench", role="admin", database_url=url)
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "api.main:app", "--port", str(port)]
    proc = subprocess.Popen(
        [*command, "--no-access-log", "--log-level", "warning"],
        cwd=ROOT,
        env=os.environ | {"BACKFILL_DATABASE_URL": url},
        stdout=(tmp / "api.log").open("ab"),
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(f"{base}/api/v1/health", proc, tmp / "api.log")
        yield LocalApi(url=base, token=token, database_url=url)
    finally:
        proc.terminate()
        proc.wait(15)
        shutil.rmtree(tmp, ignore_errors=True)


def prefect_env(workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BACKFILL_", "PREFECT_"))}
    return env | {
        "PREFECT_HOME": str(workdir / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }


@contextmanager
def prefect_server(workdir: Path) -> Iterator[str]:
    """A Prefect server for the whole benchmark (as in production); yields its API URL."""
    port = free_port()
    log = workdir / "prefect-server.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
        + ["--port", str(port)],
        env=prefect_env(workdir),
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        # A busy 2-core machine (load 15) needed more than two minutes.
        wait_healthy(f"{url}/health", proc, log, timeout=300)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@dataclass(frozen=True)
class Bench:
    """Where a benchmark runs: its work dir, a Prefect server's API URL (None: it starts its
    own), and what it logs its progress with."""

    workdir: Path
    prefect_url: str | None = None
    log: Callable[[str], None] = print

    @contextmanager
    def prefect(self) -> Iterator[str]:
        """The Prefect server's API URL: the one given, or one started for the block."""
        if self.prefect_url is not None:
            yield self.prefect_url
            return
        with prefect_server(self.workdir) as url:
            yield url


def flow_env(
    workdir: Path, prefect_url: str, api: LocalApi, media_root: Path, **extra: str
) -> dict[str, str]:
    """The environment of a flow run (CLI or script) against `api` and the Prefect server."""
    return (
        prefect_env(workdir)
        | {
            "PREFECT_API_URL": prefect_url,
            "BACKFILL_API_URL": api.url,
            "BACKFILL_API_TOKEN": api.token,
            "BACKFILL_MEDIA_ROOT": str(media_root),
        }
        | extra
    )


def run_python(what: str, *args: str, env: dict[str, str] | None = None) -> tuple[float, str]:
    """`python ARGS` in a subprocess from the repository root: (wall seconds, stdout);
    raises naming `what` when it fails."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{done.stdout}\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def last_json(stdout: str) -> Any:
    """The JSON document on the last line a script printed."""
    return json.loads(stdout.strip().splitlines()[-1])


def run_cli(
    api: LocalApi, media_root: Path, workdir: Path, prefect_url: str, *args: str
) -> tuple[float, str]:
    """`backfill run ARGS` in a subprocess against `api`: (wall seconds, stdout)."""
    env = flow_env(workdir, prefect_url, api, media_root, COLUMNS="120")
    return run_python(f"backfill run {' '.join(args)}", "-m", "ops.cli", "run", *args, env=env)


def table_value(stdout: str, metric: str) -> float:
    """A number from the summary table `backfill run` prints."""
    match = re.search(rf"{re.escape(metric)}\s*│\s*([0-9.]+)", stdout)
    if match is None:
        raise ValueError(f"no {metric!r} in:\n{stdout}")
    return float(match.group(1))


def make_files(directory: Path, count: int) -> list[Path]:
    """`count` files of 16 MiB of random bytes (reused when already there)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = directory / f"{i:04d}.bin"
        if not path.exists() or path.stat().st_size != FILE_MIB * MIB:
            path.write_bytes(os.urandom(FILE_MIB * MIB))
        paths.append(path)
    return paths


def warm(paths: Sequence[Path]) -> None:
    """Read every file once so both contenders hash from the page cache."""
    buffer = bytearray(8 * MIB)
    for path in paths:
        with path.open("rb", buffering=0) as handle:
            while handle.readinto(buffer):
                pass


def openssl_sha256(paths: Sequence[Path]) -> tuple[float, dict[str, str]]:
    started = time.perf_counter()
    done = subprocess.run(
        ["openssl", "dgst", "-sha256", *map(str, paths)],
        capture_output=True,
        text=True,
        check=True,
    )
    seconds = time.perf_counter() - started
    digests = {}
    for line in done.stdout.splitlines():
        name, _, digest = line.rpartition("= ")
        digests[name[name.index("(") + 1 : -1]] = digest.strip()
    return seconds, digests


def flow_sha256(
    paths: Sequence[Path],
    media_root: Path,
    workdir: Path,
    prefect_url: str,
    expected: dict[str, str],
) -> tuple[float, float]:
    """Hash through `backfill run file-hashing`: (wall seconds, the run's own records/s)."""
    with local_api(workdir) as api:
        api.register(media_root, paths, "video")
        warm(paths)
        seconds, stdout = run_cli(api, media_root, workdir, prefect_url, "file-hashing")
        hashes = api.hashes()
    assert len(hashes) == len(paths)
    for path in paths:
        assert hashes[path.relative_to(media_root).as_posix()] == expected[str(path)], path
    return seconds, table_value(stdout, "records/s")


def measure(
    bench: Bench, small_gib: float = 2.0, large_gib: float = 6.0, repeat: int = 2
) -> dict[str, float]:
    """Marginal MiB/s of openssl and of the flow over the same files, their ratio and fixed
    costs. Starts its own Prefect server unless `bench` names one."""
    workdir, log = bench.workdir, bench.log
    if shutil.which("openssl") is None:
        raise RuntimeError("openssl is not on PATH")
    media_root = workdir / "media"
    counts = [max(1, round(gib * 1024 / FILE_MIB)) for gib in (small_gib, large_gib)]
    log(f"writing/checking {counts[-1]} files of {FILE_MIB} MiB under {media_root} ...")
    paths = make_files(media_root / "blobs", counts[-1])
    warm(paths)

    with bench.prefect() as prefect_url:
        # One throwaway run first: Prefect registers the flow, imports get cached.
        flow_sha256(paths[:1], media_root, workdir, prefect_url, openssl_sha256(paths[:1])[1])
        openssl_s, flow_s, in_run_rates = [], [], []
        for count in counts:
            subset = paths[:count]
            openssl_runs, flow_runs = [], []
            for _ in range(repeat):  # alternate, so both see the same machine
                warm(subset)
                seconds, digests = openssl_sha256(subset)
                openssl_runs.append(seconds)
                flow_runs.append(flow_sha256(subset, media_root, workdir, prefect_url, digests))
            openssl_s.append(min(openssl_runs))
            seconds = min(s for s, _ in flow_runs)
            flow_s.append(seconds)
            in_run = max(r for _, r in flow_runs) * FILE_MIB  # MiB/s
            in_run_rates.append(in_run)
            openssl_mib_s = count * FILE_MIB / openssl_s[-1]
            log(
                f"{count * FILE_MIB / 1024:5.2f} GiB: openssl {openssl_s[-1]:6.2f} s, "
                f"backfill run file-hashing {seconds:6.2f} s "
                f"(best in-run {in_run:.0f} MiB/s = {in_run / openssl_mib_s:.2f}x openssl)"
            )

    mib = (counts[1] - counts[0]) * FILE_MIB
    openssl_rate = mib / (openssl_s[1] - openssl_s[0]) if openssl_s[1] > openssl_s[0] else nan
    flow_rate = mib / (flow_s[1] - flow_s[0]) if flow_s[1] > flow_s[0] else nan
    small = counts[0] * FILE_MIB
    return {
        "small_mib": float(small),
        "large_mib": float(counts[1] * FILE_MIB),
        "openssl_s": openssl_s[1],
        "flow_s": flow_s[1],
        "openssl_mib_per_s": openssl_rate,
        "flow_mib_per_s": flow_rate,
        "ratio": flow_rate / openssl_rate,
        "flow_in_run_mib_per_s": in_run_rates[1],
        "openssl_fixed_s": openssl_s[0] - small / openssl_rate,
        "flow_fixed_s": flow_s[0] - small / flow_rate,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/backfill-bench"))
    parser.add_argument("--small-gib", type=float, default=2.0)
    parser.add_argument("--large-gib", type=float, default=6.0)
    parser.add_argument("--repeat", type=int, default=2, help="Best of this many runs.")
    args = parser.parse_args(argv)
    if shutil.which("openssl") is None:
        sys.exit("openssl is not on PATH")

    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    f = measure(Bench(args.dir), args.small_gib, args.large_gib, args.repeat)
    print()
    print(f"marginal throughput, openssl dgst -sha256 : {f['openssl_mib_per_s']:7.0f} MiB/s")
    print(f"marginal throughput, backfill run         : {f['flow_mib_per_s']:7.0f} MiB/s")
    print(f"ratio backfill / openssl                  : {f['ratio']:7.2f}x")
    print(f"fixed start-up cost, openssl              : {f['openssl_fixed_s']:7.2f} s")
    print(f"fixed start-up cost, backfill run         : {f['flow_fixed_s']:7.2f} s")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
