"""A run that fails for an expected reason ends Failed with that reason as the flow run's
state message, and says it in one ERROR line without a traceback. Real API (uvicorn), real
files, Prefect's test server."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Iterator
from logging.handlers import BufferingHandler
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import State

from api.schemas import MediaIn, ReprocessMode
from flows.client import BackfillClient
from flows.engine import BackfillFailed
from flows.file_hashing import file_hashing
from tests.conftest import LiveApi

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_api_url")]


class Lines(BufferingHandler):
    """Keeps every record in `buffer` (a capacity never reached: it never flushes)."""

    def __init__(self) -> None:
        super().__init__(capacity=sys.maxsize)
        self.setLevel(logging.DEBUG)

    def errors(self) -> list[logging.LogRecord]:
        return [r for r in self.buffer if r.levelno >= logging.ERROR]


@pytest.fixture
def lines() -> Iterator[Lines]:
    """Every log line of flow and task runs (Prefect's loggers do not reach the root)."""
    handler = Lines()
    loggers = [logging.getLogger(n) for n in ("prefect.flow_runs", "prefect.task_runs")]
    for logger in loggers:
        logger.addHandler(handler)
    yield handler
    for logger in loggers:
        logger.removeHandler(handler)


def stored_message(state: State[Any]) -> str | None:
    """The state message of the flow run as the Prefect server holds it."""

    async def read() -> str | None:
        async with get_client() as client:
            run = await client.read_flow_run(state.state_details.flow_run_id)  # type: ignore[arg-type]
            return run.state.message if run.state else None

    return asyncio.run(read())


def assert_failed_with(state: State[Any], lines: Lines, reason: str) -> None:
    assert state.is_failed()
    assert state.message is not None and reason in state.message, state.message
    assert stored_message(state) == state.message
    errors = lines.errors()
    assert [r.getMessage() for r in errors] == [f"run failed: {state.message}"]
    assert all(r.exc_info is None and not r.exc_text for r in lines.buffer)
    assert "Traceback" not in "\n".join(r.getMessage() for r in lines.buffer)


def register(api: LiveApi, uris: list[str]) -> None:
    with BackfillClient(api.url, api.admin_token) as client:
        client.register_media([MediaIn(uri=u, media_type="audio") for u in uris])


def test_bad_token(client_env: LiveApi, lines: Lines, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKFILL_API_TOKEN", "not-a-token")

    state = file_hashing(return_state=True)

    assert_failed_with(state, lines, "401 Unauthorized on GET /api/v1/backfills")
    assert state.message is not None and "(check BACKFILL_API_TOKEN)" in state.message


def test_missing_media_root(
    client_env: LiveApi, lines: Lines, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BACKFILL_MEDIA_ROOT", str(tmp_path / "not-there"))

    state = file_hashing(return_state=True)

    assert_failed_with(state, lines, f"BACKFILL_MEDIA_ROOT {tmp_path / 'not-there'} is not a")


def test_failure_ratio(client_env: LiveApi, lines: Lines, media_root: Path) -> None:
    (media_root / "ok.bin").write_bytes(b"fine")
    register(client_env, ["ok.bin"] + [f"gone/{n}.bin" for n in range(3)])

    state = file_hashing(return_state=True, max_failure_ratio=0.5)

    assert_failed_with(state, lines, "3 of 4 records failed or were rejected")
    assert state.message == (
        "3 of 4 records failed or were rejected, more than max_failure_ratio=0.5"
    )
    # Called directly, the flow still raises with its report.
    with pytest.raises(BackfillFailed) as failed:
        file_hashing(max_failure_ratio=0.5, mode=ReprocessMode.FAILED)
    assert failed.value.report.failed == 3
