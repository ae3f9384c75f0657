"""Client-side settings: where the API listens, its token, and the media root. No database.

Read from `BACKFILL_*` environment variables and `.env`; the environment wins. The API
token may also come from a Prefect Secret block (`BACKFILL_API_TOKEN_BLOCK`, default
`corpus-api-token`), looked up only when the environment has none.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, cast

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

#: Placeholder values that must never be used as a real token.
PLACEHOLDER_TOKENS = frozenset({"changethis", "changeme"})


#: Prefect's own setting: how long its temporary (ephemeral) server may take to start, which
#: `backfill run` starts when PREFECT_API_URL is not set, and `backfill demo` always does.
PREFECT_STARTUP_TIMEOUT_ENV = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
#: Our default for it (Prefect's is 20 s): enough for a busy 2-core machine, where the first
#: start (Prefect's own migrations) took over 30 s.
DEFAULT_PREFECT_STARTUP_TIMEOUT = 120


class ConfigError(Exception):
    """A setting is missing or wrong. The message is one line an operator can act on."""


class ClientSettings(BaseSettings):
    """What a flow or the CLI needs to reach the API and the media."""

    model_config = SettingsConfigDict(
        env_prefix="BACKFILL_", env_file=".env", env_ignore_empty=True, extra="ignore"
    )

    API_URL: str = "http://127.0.0.1:8000"
    API_TOKEN: SecretStr | None = None
    API_TOKEN_BLOCK: str = "corpus-api-token"
    MEDIA_ROOT: Path = Path("./var/media")
    OUTPUT_ROOT: Path | None = None
    CONNECT_TIMEOUT: float = Field(default=5.0, gt=0)
    TIMEOUT: float = Field(default=60.0, gt=0, description="Read/write/pool timeout, seconds.")
    REMOTE_HOSTS: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Hosts whose http(s) uris workers may fetch, comma-separated; empty: none.",
    )
    MAX_DOWNLOAD_BYTES: int = Field(
        default=1 << 30, gt=0, description="Most bytes read from one remote uri."
    )
    API_RETRY_DEADLINE: float = Field(
        default=300.0,
        gt=0,
        description="Seconds a call to the API keeps retrying transport errors, 5xx and 429 "
        "(from its first failure) before the run fails with that error.",
    )
    MAX_RETRIES: int | None = Field(
        default=None, ge=0, description="Also stop after this many retries; unset: no limit."
    )

    @field_validator("API_URL")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("REMOTE_HOSTS", mode="before")
    @classmethod
    def _hosts(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, list | tuple | set | frozenset):
            return [str(host).strip().lower() for host in value if str(host).strip()]
        return value

    @model_validator(mode="after")
    def _check(self) -> ClientSettings:
        if self.API_TOKEN is not None:
            if self.API_TOKEN.get_secret_value().strip().lower() in PLACEHOLDER_TOKENS:
                raise ValueError("BACKFILL_API_TOKEN is a placeholder; set a real token")
        if self.OUTPUT_ROOT is None:
            self.OUTPUT_ROOT = self.MEDIA_ROOT / "compiled"
        if not self.output_root.resolve().is_relative_to(self.MEDIA_ROOT.resolve()):
            raise ValueError(
                f"BACKFILL_OUTPUT_ROOT ({self.OUTPUT_ROOT}) must lie inside "
                f"BACKFILL_MEDIA_ROOT ({self.MEDIA_ROOT})"
            )
        return self

    @property
    def output_root(self) -> Path:
        return self.OUTPUT_ROOT if self.OUTPUT_ROOT is not None else self.MEDIA_ROOT / "compiled"

    def api_token(self) -> str:
        """The bearer token: the environment first, then the Prefect Secret block."""
        if self.API_TOKEN is not None:
            return self.API_TOKEN.get_secret_value()
        token = _token_from_block(self.API_TOKEN_BLOCK)
        if token:
            return token
        raise ConfigError(
            "BACKFILL_API_TOKEN is not set (nor a Prefect Secret block "
            f"{self.API_TOKEN_BLOCK!r}); create one with `backfill api token create NAME`"
        )


def _token_from_block(name: str) -> str | None:
    """The token from a Prefect Secret block, or None.

    Only tried inside a flow run or when PREFECT_API_URL is set: anywhere else Prefect would
    start a throwaway server just to find that the block does not exist.
    """
    if not name or not (os.environ.get("PREFECT_API_URL") or _in_flow_run()):
        return None
    try:
        from prefect.blocks.system import Secret

        block = Secret.load(name, _sync=True)  # type: ignore[call-arg]
        value = cast(Secret[str], block).get()
    except Exception:  # a missing block or an unreachable Prefect API: no token from here
        return None
    return str(value) if value else None


def _in_flow_run() -> bool:
    if "prefect" not in sys.modules:  # nobody imported Prefect, so no flow is running
        return False
    from prefect.context import FlowRunContext

    return FlowRunContext.get() is not None


def prefect_startup_timeout() -> int:
    """Seconds Prefect's temporary server may take to start (our default when unset)."""
    value = os.environ.get(PREFECT_STARTUP_TIMEOUT_ENV, "").strip()
    if not value:
        return DEFAULT_PREFECT_STARTUP_TIMEOUT
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(
            f"{PREFECT_STARTUP_TIMEOUT_ENV} must be a whole number of seconds, not {value!r}"
        )
    return int(value)


def load_settings(**overrides: object) -> ClientSettings:
    """Settings from the environment; a bad value raises one-line `ConfigError`."""
    try:
        return ClientSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        name = f"BACKFILL_{where}: " if where else ""
        raise ConfigError(f"{name}{error['msg'].removeprefix('Value error, ')}") from None
