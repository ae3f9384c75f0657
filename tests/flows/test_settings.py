"""Client settings: defaults, the output root rule, and one-line errors for a bad config."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.settings import ConfigError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No BACKFILL_* from the outside world, and no `.env` in the working directory."""
    for name in (
        "API_URL",
        "API_TOKEN",
        "MEDIA_ROOT",
        "OUTPUT_ROOT",
        "TIMEOUT",
        "CONNECT_TIMEOUT",
        "MAX_RETRIES",
    ):
        monkeypatch.delenv(f"BACKFILL_{name}", raising=False)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.chdir(tmp_path)


def test_defaults() -> None:
    settings = load_settings()

    assert settings.API_URL == "http://127.0.0.1:8000"
    assert settings.MEDIA_ROOT == Path("var/media")
    assert settings.output_root == Path("var/media/compiled")
    assert settings.TIMEOUT == 60.0 and settings.CONNECT_TIMEOUT == 5.0


def test_environment_and_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "BACKFILL_API_URL=http://api.internal:9000/\nBACKFILL_API_TOKEN=from-dotenv\n"
    )
    monkeypatch.setenv("BACKFILL_API_TOKEN", "from-env")

    settings = load_settings()

    assert settings.API_URL == "http://api.internal:9000"
    assert settings.api_token() == "from-env"  # the environment wins over .env


def test_missing_token_is_one_clear_line() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings().api_token()

    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("BACKFILL_API_TOKEN is not set")


def test_placeholder_token_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKFILL_API_TOKEN", "changethis")

    with pytest.raises(ConfigError, match="placeholder"):
        load_settings()


def test_output_root_must_lie_inside_media_root(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BACKFILL_MEDIA_ROOT", str(tmp_path / "media"))
    monkeypatch.setenv("BACKFILL_OUTPUT_ROOT", str(tmp_path / "elsewhere"))

    with pytest.raises(ConfigError, match="must lie inside BACKFILL_MEDIA_ROOT"):
        load_settings()

    monkeypatch.setenv("BACKFILL_OUTPUT_ROOT", str(tmp_path / "media" / "out"))
    assert load_settings().output_root == tmp_path / "media" / "out"


def test_bad_url_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKFILL_API_URL", "127.0.0.1:8000")

    with pytest.raises(ConfigError, match=r"^BACKFILL_API_URL: must start with http"):
        load_settings()


def test_token_from_prefect_secret_block_when_env_has_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import flows.settings

    monkeypatch.setattr(flows.settings, "_token_from_block", lambda name: f"block:{name}")
    assert load_settings().api_token() == "block:corpus-api-token"

    monkeypatch.setenv("BACKFILL_API_TOKEN", "env-token")
    assert load_settings().api_token() == "env-token"


def test_token_from_a_real_secret_block_inside_a_flow_run(prefect_api_url: str) -> None:
    from prefect import flow
    from prefect.blocks.system import Secret

    Secret(value="cbk_from-the-block").save("test-api-token", overwrite=True)

    @flow
    def read_token() -> str:
        return load_settings(API_TOKEN_BLOCK="test-api-token").api_token()

    assert read_token() == "cbk_from-the-block"
    # Outside a flow run (and without PREFECT_API_URL) the block is not consulted.
    with pytest.raises(ConfigError):
        load_settings(API_TOKEN_BLOCK="test-api-token").api_token()
