"""A PostgreSQL database for the benchmarks: `BACKFILL_BENCH_PG_URL`, or a throwaway cluster.

The throwaway cluster is what `.ci/pg.sh` starts: initdb + pg_ctl in a temp dir on
127.0.0.1, trust auth, fsync off; as root it runs as the `postgres` user (initdb refuses
root). It is stopped and deleted on exit.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ENV_URL = "BACKFILL_BENCH_PG_URL"


class Unavailable(Exception):
    """No PostgreSQL to benchmark against; the message says why."""


def pg_bin() -> Path | None:
    """The directory holding initdb and pg_ctl, or None."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    return None


def _owner_prefix() -> list[str]:
    """As root, run cluster commands as an unprivileged user."""
    if os.getuid() != 0:
        return []
    for user in ("postgres", "nobody"):
        if subprocess.run(["id", user], capture_output=True).returncode == 0:
            return ["runuser", "-u", user, "--"]
    raise Unavailable("running as root and there is no postgres/nobody user for initdb")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def postgres() -> Iterator[tuple[str, str]]:
    """Yield (SQLAlchemy URL, where it came from); raise `Unavailable` if there is none."""
    url = os.environ.get(ENV_URL)
    if url:
        yield url, f"${ENV_URL}"
        return
    bindir = pg_bin()
    if bindir is None:
        raise Unavailable(f"no ${ENV_URL} and no initdb/pg_ctl on PATH or /usr/lib/postgresql")
    prefix = _owner_prefix()
    tmp = Path(tempfile.mkdtemp(prefix="backfill-bench-pg."))
    tmp.chmod(0o755)
    if prefix:
        shutil.chown(tmp, user=prefix[2])
    data, port = tmp / "data", _free_port()
    try:
        initdb = [str(bindir / "initdb"), "-D", str(data), "-U", "backfill", "--auth=trust"]
        done = subprocess.run(
            [*prefix, *initdb, "-E", "UTF8"], capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            raise Unavailable(f"initdb failed: {done.stderr.strip()[-300:]}")
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {tmp} -c fsync=off"
        pg_ctl = [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(tmp / "server.log")]
        done = subprocess.run(
            [*prefix, *pg_ctl, "-w", "-t", "60", "-o", options, "start"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            log = (tmp / "server.log").read_text() if (tmp / "server.log").exists() else ""
            raise Unavailable(f"pg_ctl start failed: {(done.stderr + log).strip()[-300:]}")
        try:
            yield (
                f"postgresql+psycopg://backfill@127.0.0.1:{port}/postgres",
                f"throwaway cluster (PostgreSQL {bindir.parent.name}, fsync=off)",
            )
        finally:
            subprocess.run(
                [*prefix, *pg_ctl, "-m", "fast", "-w", "stop"], capture_output=True, timeout=120
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
