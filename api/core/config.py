"""Server settings: environment variables prefixed BACKFILL_, `.env` read too."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """What the API process needs. Clients never see the database URL."""

    model_config = SettingsConfigDict(
        env_prefix="BACKFILL_", env_file=".env", env_ignore_empty=True, extra="ignore"
    )

    DATABASE_URL: str = Field(
        default="sqlite:///./var/backfill.db",
        description="SQLAlchemy URL; postgresql+psycopg://... in production.",
    )
    MAX_ATTEMPTS: int = Field(
        default=3, ge=1, description="Failures after which a record is quarantined."
    )
    COMPILE_LEASE_SECONDS: float = Field(
        default=3600.0, gt=0, description="A project left compiling longer is pending again."
    )
    LOG_JSON: bool = Field(default=False, description="Log JSON lines instead of text.")
    DB_POOL_SIZE: int = Field(default=10, ge=1)
    IDEMPOTENCY_KEY_HOURS: float = Field(
        default=168.0,
        gt=0,
        description="How long a batch's Idempotency-Key (and its stored response) is kept; "
        "a replay within it changes nothing. Older keys are purged hourly.",
    )


@lru_cache
def get_settings() -> Settings:
    return Settings()
