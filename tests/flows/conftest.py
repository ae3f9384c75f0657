"""Fixtures for the client side: a Prefect test server (once per session), a media root,
tiny WAV files with exact durations, and the client environment pointed at a live API."""

from __future__ import annotations

import os
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import LiveApi, prefect_server_timeout


@pytest.fixture(scope="session")
def prefect_api_url() -> Iterator[str]:
    """Start Prefect's test server once per session (on the deadline of
    `prefect_server_timeout()`, from BACKFILL_TEST_SERVER_TIMEOUT); yield its API URL."""
    timeout = int(prefect_server_timeout())
    env = {
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": str(timeout),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    try:
        with (
            prefect_test_harness(server_startup_timeout=timeout),
            # No crash-detection heartbeats here: joining their thread costs ~1 s per run.
            temporary_settings(updates={"flows.heartbeat_frequency": None}),
        ):
            url = PREFECT_API_URL.value()
            assert url
            yield str(url)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def media_root(tmp_path: Path) -> Path:
    root = tmp_path / "media"
    root.mkdir()
    return root


def write_wav(path: Path, *, frames: int, rate: int = 8000, channels: int = 1) -> float:
    """A silent 16-bit PCM WAV of exactly `frames` frames; returns its duration in seconds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(b"\x00\x00" * channels * frames)
    return frames / rate


@pytest.fixture
def client_env(live_api: LiveApi, media_root: Path, monkeypatch: pytest.MonkeyPatch) -> LiveApi:
    """BACKFILL_* pointed at the live API and the media root; no database URL anywhere."""
    monkeypatch.setenv("BACKFILL_API_URL", live_api.url)
    monkeypatch.setenv("BACKFILL_API_TOKEN", live_api.admin_token)
    monkeypatch.setenv("BACKFILL_MEDIA_ROOT", str(media_root))
    monkeypatch.setenv("BACKFILL_MAX_RETRIES", "8")
    monkeypatch.delenv("BACKFILL_DATABASE_URL", raising=False)
    return live_api


@pytest.fixture
def quarantine_at_first_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """The live API (started after this) quarantines a record at its first failure."""
    monkeypatch.setenv("BACKFILL_MAX_ATTEMPTS", "1")
