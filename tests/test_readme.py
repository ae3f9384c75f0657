"""The README's API walk-through, run verbatim: if the docs rot, this fails."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port, on_a_free_port, spawn, stop_group, wait_healthy


def readme_commands() -> list[str]:
    """Indented shell lines of the 'Run the API' section, continuation lines joined."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Run the API", 1)[1].split("\n## ", 1)[0]
    lines, current = [], ""
    for raw in section.splitlines():
        if not raw.startswith("    "):
            continue
        line = (
            re.sub(r"\s+#.*$", "", raw.strip()) if not raw.strip().startswith("-") else raw.strip()
        )
        current += line.rstrip("\\").rstrip() + " "
        if not line.endswith("\\"):
            lines.append(current.strip())
            current = ""
    return [line for line in lines if line]


@pytest.mark.e2e
@pytest.mark.slow  # three `uv run` commands and an API
def test_readme_api_walkthrough(tmp_path: Path) -> None:
    commands = readme_commands()
    assert [c.split()[0:4] for c in commands[:3]] == [
        ["uv", "run", "backfill", "api"],
    ] * 3
    # From the checkout, as the README runs them (outside a project, `uv run backfill` would
    # find the command only on a PATH that has the project's environment on it).
    env = os.environ | {"BACKFILL_DATABASE_URL": f"sqlite:///{tmp_path / 'readme.db'}"}
    migrate, token_create, serve, *curls = commands
    subprocess.run(shlex.split(migrate), cwd=ROOT, env=env, check=True, timeout=120)
    token = subprocess.run(
        shlex.split(token_create),
        cwd=ROOT,
        env=env,
        check=True,
        timeout=120,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert token.startswith("cbk_")
    log_path = tmp_path / "api.log"

    def start(port: int) -> tuple[subprocess.Popen[bytes], int]:
        with log_path.open("ab") as log:
            server = spawn(
                "the README's API",
                shlex.split(serve.replace("8000", str(port))),
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_healthy(server, f"http://127.0.0.1:{port}", log_path=log_path)
        except BaseException:
            stop_group(server)
            raise
        return server, port

    server, port = on_a_free_port(start, free_port())
    try:
        curls = [curl.replace("8000", str(port)) for curl in curls]
        outputs = [
            json.loads(
                subprocess.run(
                    ["bash", "-c", curl],
                    cwd=ROOT,
                    env=env | {"TOKEN": token},
                    check=True,
                    capture_output=True,
                    text=True,
                    timeout=60,
                ).stdout
            )
            for curl in curls
        ]
    finally:
        stop_group(server)
    registered, pending, applied, coverage = outputs
    assert registered["items"][0] == {
        "uri": "talks/intro.wav",
        "id": 1,
        "status": "created",
        "reason": None,
    }
    assert [i["record_id"] for i in pending["items"]] == [1]
    assert applied == {"applied": 1, "unchanged": 0, "rejected": [], "dry_run": False}
    durations = next(k for k in coverage["kinds"] if k["kind"] == "media-duration")
    assert durations["done"] == 1 and durations["pending"] == 0


def test_readme_layout_names_every_top_level_folder() -> None:
    """The layout section lists each folder of the checkout (and prefect.yaml), once."""
    text = (ROOT / "README.md").read_text()
    layout = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^    (\S+)", layout, flags=re.MULTILINE)
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    folders = {f"{p.split('/')[0]}/" for p in tracked if "/" in p and not p.startswith(".")}
    assert sorted(listed) == sorted(folders | {"prefect.yaml"})
