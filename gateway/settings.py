"""Gateway settings: one pydantic-settings class, read from ``HEXBOOK_*`` variables."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Everything the gateway can be told; ``HEXBOOK_REDIS_URL=...`` and so on."""

    model_config = SettingsConfigDict(env_prefix="HEXBOOK_", extra="ignore")

    redis_url: str | None = Field(None, description="external Redis; none: embedded")
    ray_address: str | None = Field(None, description="Ray cluster; none: local Ray")
    data_dir: Path = Field(Path("data"), description="embedded Redis data folder")
    shards: int = Field(2, ge=1, le=1024)
    namespace: str = "hexbook"
    hold_ttl_seconds: int = Field(300, ge=10, le=3600)
    max_body_bytes: int = Field(64 * 1024, ge=1024)
    batch_max: int = Field(1000, ge=1, description="commands per actor call at most")
    index_first_day: date | None = Field(
        None, description="first UTC day the search index covers (default: yesterday)"
    )
    index_days: int = Field(16, ge=1, le=400, description="days the search index covers")
