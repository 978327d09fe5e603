"""Settings, read once from ``DYDC_*`` environment variables and validated at start-up."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]

PositiveInt = Annotated[int, Field(gt=0)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DYDC_", extra="ignore", frozen=True)

    host: str = Field("127.0.0.1", description="Address `python -m app` binds to.")
    port: Annotated[int, Field(ge=0, le=65535)] = Field(
        8000, description="Port for `python -m app`."
    )
    device: str = Field(
        "auto", description="auto (every GPU, else the CPU), cpu, cuda, cuda:N, or a list "
        "such as cuda:0,cuda:1: one worker per device."
    )
    max_body_bytes: PositiveInt = Field(64 * 2**20, description="Largest request body (413 above).")
    max_samples: PositiveInt = Field(
        2_000_000, description="Largest batch N per request (413 above)."
    )
    reverse_loop_max_n: PositiveInt = Field(1000, description="Cap on N for reverse-loop.")
    reverse_batched_max_n: PositiveInt = Field(4096, description="Cap on N for reverse-batched.")
    jacrev_max_n: PositiveInt = Field(4096, description="Cap on N for jacrev.")
    max_batch_samples: PositiveInt = Field(
        262_144, description="Samples per device launch: requests coalesce up to it, and "
        "larger requests run in chunks of it."
    )
    max_delay_ms: Annotated[float, Field(ge=0)] = Field(
        2.0, description="How long the first request of a partial batch may wait for company."
    )
    max_queue_samples: PositiveInt = Field(
        4_000_000, description="Samples queued before new requests get 503 + Retry-After."
    )
    request_timeout_ms: Annotated[float, Field(gt=0)] = Field(
        30_000, description="Default deadline; a request still queued at it gets 504."
    )
    grace_period_s: Annotated[float, Field(ge=0)] = Field(
        30.0, description="On SIGTERM, how long to drain before exiting."
    )
    gc_threshold: Annotated[int, Field(ge=0)] = Field(
        20_000, description="Allocations between young-generation garbage collections "
        "(Python's default is 700; 0 keeps it). Objects alive at start-up are frozen out of "
        "collections."
    )
    warmup: bool = Field(True, description="Run every routine once at start-up before ready.")
    compile: bool = Field(
        True, description="Run forward mode (forward, auto) through torch.compile for launches "
        "of at least DYDC_COMPILE_MIN_SAMPLES samples; needs a C++ compiler on the CPU (Triton "
        "on CUDA), and falls back to eager forward mode without one."
    )
    compile_min_samples: PositiveInt = Field(
        65_536, description="Smallest launch that runs compiled forward mode."
    )
    compile_chunk: PositiveInt = Field(
        1_048_576, description="Most samples per call of a compiled graph; a larger launch takes "
        "several calls (one graph serves every batch size)."
    )
    compile_warmup: bool = Field(
        False, description="With DYDC_WARMUP and DYDC_COMPILE, build (or load from "
        "DYDC_COMPILE_CACHE_DIR) every routine's compiled forward mode for one large request "
        "(all parameters, shared, each dtype) before /readyz turns 200, instead of in the "
        "background after the first such request (docs/compiled.md: time to ready)."
    )
    compile_cache_dir: Path | None = Field(
        None, description="Where compiled graphs are kept across restarts: created mode 0700, "
        "and refused at start-up if another user owns it or others can reach it (its files are "
        "loaded as code). Default: $XDG_CACHE_HOME/dydc, else ~/.cache/dydc."
    )
    compile_max_graphs: PositiveInt = Field(
        128, description="Most compiled graphs (kinds: routine x wrt x dtype x device x "
        "parameter layout); launches of further kinds run eagerly, counted in "
        "dydc_compile_refusals_total{reason=\"max_graphs\"}."
    )
    compile_build_niceness: Annotated[int, Field(ge=0, le=19)] = Field(
        10, description="How much lower the build process's CPU priority is than the "
        "service's (nice): builds then take what serving leaves. 0 on a host whose other "
        "tenants would starve them."
    )
    compile_recheck_every: PositiveInt = Field(
        1000, description="A compiled graph's first launch and every this many after it are "
        "compared with eager forward mode on a few rows; a mismatch retires the graph."
    )
    host_allocator_cache: bool = Field(
        True, description="Keep freed large host buffers for reuse instead of returning them "
        "to the OS (glibc malloc settings; Linux only)."
    )
    torch_threads: PositiveInt | None = Field(None, description="torch intra-op threads.")
    log_level: str = Field("info", description="Python logging level.")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        parts = [p.strip() for p in v.split(",")]
        if not all(re.fullmatch(r"auto|cpu|cuda(:\d+)?", p) for p in parts):
            raise ValueError("DYDC_DEVICE must be auto, cpu, cuda, cuda:N or a comma-separated "
                             "list of them")
        return ",".join(parts)

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, v: str) -> str:
        if v.lower() not in {"critical", "error", "warning", "info", "debug"}:
            raise ValueError("DYDC_LOG_LEVEL must be critical, error, warning, info or debug")
        return v.lower()

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.max_queue_samples < self.max_batch_samples:
            raise ValueError("DYDC_MAX_QUEUE_SAMPLES must be at least DYDC_MAX_BATCH_SAMPLES")
        return self
