"""Settings, read once from ``DYDC_*`` environment variables and validated at start-up."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]

PositiveInt = Annotated[int, Field(gt=0)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DYDC_", extra="ignore", frozen=True)

    host: str = Field("127.0.0.1", description="Address `python -m app` binds to.")
    port: Annotated[int, Field(ge=0, le=65535)] = Field(8000, description="Port for `python -m app`.")
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda or cuda:N.")
    max_body_bytes: PositiveInt = Field(64 * 2**20, description="Largest request body (413 above).")
    max_samples: PositiveInt = Field(2_000_000, description="Largest batch N per request (413 above).")
    reverse_loop_max_n: PositiveInt = Field(1000, description="Cap on N for reverse-loop.")
    reverse_batched_max_n: PositiveInt = Field(4096, description="Cap on N for reverse-batched.")
    jacrev_max_n: PositiveInt = Field(4096, description="Cap on N for jacrev.")
    warmup: bool = Field(True, description="Run every routine once at start-up before ready.")
    torch_threads: PositiveInt | None = Field(None, description="torch intra-op threads.")
    log_level: str = Field("info", description="Python logging level.")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", v):
            raise ValueError("DYDC_DEVICE must be auto, cpu, cuda or cuda:N")
        return v

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, v: str) -> str:
        if v.lower() not in {"critical", "error", "warning", "info", "debug"}:
            raise ValueError("DYDC_LOG_LEVEL must be critical, error, warning, info or debug")
        return v.lower()
