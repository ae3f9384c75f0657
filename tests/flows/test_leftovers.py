"""Temporary files of killed renders and downloads: a later run removes them, never a live
writer's. Real processes hold the locks (and are SIGKILLed), real files are swept."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.compute.leftovers import GRACE_SECONDS
from flows.compute.render import sweep_parts

# A render as far as its files go: claims its .part.mp4 (the lock), writes the audio part
# beside it, says so, and works until it is killed.
WRITER = """
import sys, time
from pathlib import Path
from flows.compute.leftovers import claim
video = Path(sys.argv[1])
with claim(video) as fd:
    Path(str(video).replace(".part.mp4", ".part.m4a")).write_bytes(b"audio")
    print("ready", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def writers() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def start_render(writers: list[subprocess.Popen[str]], part: Path) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(part)], stdout=subprocess.PIPE, text=True
    )
    writers.append(process)
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    return process


def age(*paths: Path, seconds: float = 2 * GRACE_SECONDS) -> None:
    then = time.time() - seconds
    for path in paths:
        os.utime(path, (then, then))


def test_sweep_removes_a_killed_renders_parts_and_keeps_a_live_ones(
    tmp_path: Path, writers: list[subprocess.Popen[str]]
) -> None:
    out = tmp_path / "compiled"
    out.mkdir()
    killed = out / ".p1-abc.mp4.111111111111.part.mp4"
    live = out / ".p2-def.mp4.222222222222.part.mp4"
    victim = start_render(writers, killed)
    start_render(writers, live)
    thumb = out / ".p1-abc.jpg.111111111111.part.jpg"  # written by the killed one, too
    thumb.write_bytes(b"jpeg")
    fresh = out / ".p3-ghi.mp4.333333333333.part.m4a"  # unlocked, but just written
    fresh.write_bytes(b"new")
    done = out / "p0-final.mp4"  # a published video is never a leftover
    done.write_bytes(b"video")
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    parts = [killed, killed.with_suffix(".m4a"), thumb, live, live.with_suffix(".m4a"), done]
    age(*parts)

    removed = sweep_parts(out)

    assert sorted(removed) == sorted([killed, killed.with_suffix(".m4a"), thumb])
    assert not killed.exists() and not thumb.exists()
    assert live.exists() and live.with_suffix(".m4a").exists()  # its render still runs
    assert fresh.exists() and done.exists()
    assert sweep_parts(out) == []  # nothing more to do


def test_a_finished_renders_lock_is_released(tmp_path: Path) -> None:
    """The lock lives exactly as long as the writer: closed, the file is a leftover."""
    from flows.compute.leftovers import claim, is_locked

    part = tmp_path / ".x.mp4.444444444444.part.mp4"
    with claim(part):
        assert is_locked(part)
    assert not is_locked(part)
    age(part)
    assert sweep_parts(tmp_path) == [part]
