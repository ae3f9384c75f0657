"""The server fixtures stop what they start, even when the server never comes up."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import STARTED, LiveApi, session_members


def test_an_api_that_never_becomes_healthy_is_still_killed(tmp_path: Path) -> None:
    # uvicorn starts, but /health could only answer 503: its database is unreachable.
    api = LiveApi(
        database_url="postgresql+psycopg://nobody:secret@127.0.0.1:9/none?connect_timeout=1",
        admin_token="-",
        reader_token="-",
        log_path=tmp_path / "api.log",
    )
    # The deadline comes while the process is alive: start() kills its group, then raises.
    with pytest.raises(RuntimeError, match="did not become healthy in 3 s"):
        api.start(timeout=3)
    (leader,) = api.pids
    assert api.process is None
    assert session_members(leader) == []
    assert leader not in STARTED
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{api.url}/api/v1/health", timeout=2)


def test_an_api_that_exits_at_once_leaves_nothing(tmp_path: Path) -> None:
    api = LiveApi(
        database_url="nonsense://",
        admin_token="-",
        reader_token="-",
        log_path=tmp_path / "api.log",
    )
    with pytest.raises(RuntimeError, match="API exited with"):
        api.start()
    (leader,) = api.pids
    assert session_members(leader) == [] and leader not in STARTED
