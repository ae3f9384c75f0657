"""Fixtures for the client side: tiny WAV files with exact durations, and the client
environment pointed at a live API (the Prefect test server and the media root are
tests/conftest.py's, shared with tests/reliability)."""

from __future__ import annotations

import wave
from pathlib import Path

import pytest

from tests.conftest import LiveApi


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
