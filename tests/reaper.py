"""The run's reaper: stops every process a test started once the process that owns the run is
gone without stopping them itself (killed: SIGKILL, SIGTERM, a CI job out of time).

    python tests/reaper.py OWNER_PID RUN_ROOT

`tests.conftest.spawn` starts each server in a session of its own and names it by a file in
RUN_ROOT/sessions (`name_session`, which the run's Prefect test server goes through too);
stopping it removes the file. Each xdist worker names itself in
RUN_ROOT/workers. While OWNER_PID lives, the reaper only waits; once it is gone, it kills
the workers (so they start nothing more), stops every session still named (SIGTERM, SIGKILL
after 10 s), removes RUN_ROOT and exits. A run that ends normally stops the reaper itself
(`pytest_unconfigure` in tests/conftest.py). Standard library only: it starts in
milliseconds and imports nothing of the project.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from pathlib import Path

#: Seconds a stopped session gets to exit after SIGTERM before SIGKILL.
GRACE = 10.0


def stat_fields(pid: int | str) -> list[str] | None:
    """The fields of /proc/PID/stat after `pid (comm)`: state ppid pgrp session ... (comm may
    hold spaces, so it is split after the last ')'); None once the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def session_members(sid: int) -> list[int]:
    """Pids of live processes in session `sid` (Linux /proc): a process started with
    `start_new_session=True` and every child it started, even one its parent left behind."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := stat_fields(entry.name)) is not None:
            if fields[0] != "Z" and int(fields[3]) == sid:
                found.append(int(entry.name))
    return found


def stop_sessions(sids: list[int], timeout: float = 20.0, *, kill: bool = False) -> None:
    """SIGTERM (SIGKILL when `kill`) every process of sessions `sids` (ones this process need
    not be the parent of), SIGKILL what is left after `timeout` s; return once none is alive."""
    kill_at = time.monotonic() + (0 if kill else timeout)
    while members := [pid for sid in sids for pid in session_members(sid)]:
        now = time.monotonic()
        if now > kill_at + timeout:
            raise RuntimeError(f"processes of sessions {sids} survive SIGKILL: {members}")
        for pid in members:
            try:
                os.kill(pid, signal.SIGKILL if now >= kill_at else signal.SIGTERM)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, killed but not yet reaped by its parent, does not)."""
    fields = stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def pids(folder: Path) -> list[int]:
    """The pids named by the files of `folder`."""
    return [int(p.name) for p in folder.glob("*") if p.name.isdigit()]


def reap(owner: int, root: Path, every: float = 1.0) -> None:
    """Wait while `owner` lives and `root` exists; if `owner` goes first, stop what it left."""
    while root.is_dir():
        if not alive(owner):
            for worker in pids(root / "workers"):  # first, so that they start nothing more
                try:
                    os.kill(worker, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                stop_sessions(pids(root / "sessions"), GRACE)
            finally:
                shutil.rmtree(root, ignore_errors=True)
            return
        time.sleep(every)


if __name__ == "__main__":
    reap(int(sys.argv[1]), Path(sys.argv[2]))
