"""Settings, read once from ``DYDC_*`` environment variables and validated at start-up."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated, Self

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from app.strategy_names import STRATEGY_NAMES

__all__ = ["Settings", "load_settings", "settings_error"]

# Bounds no real setting comes near, so that a typo of many digits (or "inf") is refused at
# start-up instead of overflowing where the value is used (zlib's max_length, a thread's
# join timeout): counts and bytes at most 2^53, durations at most a day.
_MOST = 2**53
_DAY_S = 86_400.0
PositiveInt = Annotated[int, Field(gt=0, le=_MOST)]
Count = Annotated[int, Field(ge=0, le=_MOST)]


def _read_keys(text: str) -> frozenset[str]:
    """A keys file's keys: one a line, blank lines and # comments skipped."""
    lines = (line.strip() for line in text.splitlines())
    return frozenset(line for line in lines if line and not line.startswith("#"))


def _listed_keys(text: str) -> frozenset[str]:
    """DYDC_API_KEYS's keys: comma-separated (no comments: a key may begin with #)."""
    return frozenset(key for key in (k.strip() for k in text.split(",")) if key)


def _sendable(key: str) -> bool:
    """A key a client can send as ``Bearer <key>`` or in X-API-Key: visible ASCII only."""
    return all("!" <= char <= "~" for char in key)


# allow_inf_nan: a float setting of inf, nan or 1e400 is refused like any invalid value
_CONFIG = SettingsConfigDict(env_prefix="DYDC_", extra="ignore", frozen=True,
                             allow_inf_nan=False)

class _ServerSettings(BaseSettings):
    """How the process runs: where it listens, its devices and threads, its connections,
    start-up and shutdown, and where routines come from."""

    model_config = _CONFIG

    host: str = Field("127.0.0.1", description="Address `python -m app` binds to.")
    port: Annotated[int, Field(ge=0, le=65535)] = Field(
        8000, description="Port for `python -m app`."
    )
    device: str = Field(
        "auto", description="auto (every GPU, else the CPU), cpu, cuda, cuda:N, or a list "
        "such as cuda:0,cuda:1: one worker per device."
    )
    read_timeout_s: Annotated[float, Field(gt=0, le=_DAY_S)] = Field(
        10.0, description="A connection that has not sent a complete request (headers and "
        "body) this long after it opened, or after its previous response, is closed."
    )
    max_connections: PositiveInt = Field(
        2048, description="Open connections at most; the next one is answered 503 and closed."
    )
    grace_period_s: Annotated[float, Field(ge=0, le=_DAY_S)] = Field(
        30.0, description="On SIGTERM, how long to drain before exiting."
    )
    gc_threshold: Count = Field(
        20_000, description="Allocations between young-generation garbage collections "
        "(Python's default is 700; 0 keeps it). Objects alive at start-up are frozen out of "
        "collections."
    )
    warmup: bool = Field(True, description="Run every routine once at start-up before ready.")
    host_allocator_cache: bool = Field(
        True, description="Keep freed large host buffers for reuse instead of returning them "
        "to the OS (glibc malloc settings; Linux only)."
    )
    torch_threads: PositiveInt | None = Field(
        None, description="torch intra-op threads, of eager launches and compiled graphs alike.")
    routines_path: str = Field(
        "", description="Colon-separated folders whose .py modules are imported at start-up "
        "as routines."
    )

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        parts = [p.strip() for p in v.split(",")]
        if not all(re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", p) for p in parts):
            raise ValueError("DYDC_DEVICE must be auto, cpu, cuda, cuda:N or a comma-separated "
                             "list of them")
        return ",".join(parts)

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        # empty, uvicorn would bind every interface: never what a blank variable meant
        if not v.strip() or v != v.strip():
            raise ValueError("DYDC_HOST must be an address or host name to bind to, such as "
                             "127.0.0.1 (this machine only) or 0.0.0.0 (every interface)")
        return v

    @field_validator("routines_path")
    @classmethod
    def _routines_path(cls, v: str) -> str:
        for folder in filter(None, v.split(":")):
            if not Path(folder).is_dir():
                raise ValueError(f"DYDC_ROUTINES_PATH names {folder}, which is not a folder; "
                                 "give folders separated by ':'")
        return v

    @property
    def routine_folders(self) -> list[Path]:
        return [Path(f) for f in self.routines_path.split(":") if f]


class _LimitSettings(BaseSettings):
    """What one request may ask and what the server holds at once: bodies, samples, answers,
    strategies and their caps, cost, batching and the queue."""

    model_config = _CONFIG

    max_body_bytes: PositiveInt = Field(64 * 2**20, description="Largest request body (413 above).")
    max_samples: PositiveInt = Field(
        2_000_000, description="Largest batch N per request (413 above)."
    )
    max_scenarios: PositiveInt = Field(
        1024, description="Most scenarios in one scenarios request (422 above); their "
        "samples in all (scenarios x N) are held to DYDC_MAX_SAMPLES too."
    )
    max_inflight_body_bytes: PositiveInt = Field(
        256 * 2**20, description="Bytes of request bodies being read or parsed at once, over all "
        "requests; a body that would go past it is refused at once with 503 + Retry-After."
    )
    max_headers: PositiveInt = Field(
        100, description="Header fields a request may carry (431 above)."
    )
    max_header_bytes: Annotated[int, Field(ge=1024, le=_MOST)] = Field(
        16_384, description="Bytes of a request's head: its header names and values, and on "
        "the wire its request line and header lines as they arrive (431 above, before the rest "
        "is buffered)."
    )
    max_response_bytes: PositiveInt = Field(
        128 * 2**20, description="Largest answer, priced before the job runs (N x outputs x "
        "the arrays asked: values, derivatives, second-order pairs; 25 bytes a number in JSON, "
        "8 or 4 in binary v2): 422 above, naming the estimate and what to ask for instead. "
        "Default: half the in-flight body budget's default."
    )
    strategies: str = Field(
        "all", description="Strategies this server serves, comma-separated (default all); "
        "the others are refused with 422 and listed as enabled: false."
    )
    max_job_cost: Annotated[float, Field(gt=0, le=_DAY_S)] = Field(
        10.0, description="Most estimated device seconds one request may cost (422 above, "
        "naming a cheaper strategy); a job whose first slices show it well over is stopped."
    )
    slice_ms: Annotated[float, Field(gt=0, le=_DAY_S * 1e3)] = Field(
        50.0, description="Target length of one slice of a heavy job (O(N^2) strategies): "
        "light requests wait at most about this long behind one."
    )
    reverse_loop_max_n: PositiveInt = Field(1000, description="Cap on N for reverse-loop.")
    reverse_batched_max_n: PositiveInt = Field(4096, description="Cap on N for reverse-batched.")
    jacrev_max_n: PositiveInt = Field(4096, description="Cap on N for jacrev.")
    max_batch_samples: PositiveInt = Field(
        262_144, description="Samples per device launch: requests coalesce up to it, and "
        "larger requests run in chunks of it (on the CPU, a request that a compiled graph "
        "runs within DYDC_SLICE_MS at its measured rate runs whole)."
    )
    max_delay_ms: Annotated[float, Field(ge=0, le=_DAY_S * 1e3)] = Field(
        2.0, description="How long the first request of a partial batch may wait for company."
    )
    inline_launch_ms: Annotated[float, Field(ge=0, le=1000)] = Field(
        1.0, description="On a CPU device, a small request of a kind that has launched "
        "before, priced under this many ms of device time and within it at its kind's last "
        "launch's rate, runs on the event loop's thread, batched with those that arrived with "
        "it, when the device worker is idle: handing it to the worker's thread costs more "
        "than the launch. At most this long of such launches a turn of the loop; the rest "
        "queue for the worker. 0: every launch on the worker."
    )
    max_queue_samples: PositiveInt = Field(
        4_000_000, description="Samples queued before new requests get 503 + Retry-After."
    )
    request_timeout_ms: Annotated[float, Field(gt=0, le=_DAY_S * 1e3)] = Field(
        30_000, description="Default deadline; a request still queued at it gets 504."
    )

    @field_validator("strategies")
    @classmethod
    def _strategies(cls, v: str) -> str:
        names = [p.strip() for p in v.split(",") if p.strip()]
        if names == ["all"]:
            return "all"
        unknown = [n for n in names if n not in STRATEGY_NAMES]
        if not names or unknown:
            raise ValueError(f"DYDC_STRATEGIES must be all, or strategies separated by commas "
                             f"from: {', '.join(STRATEGY_NAMES)}")
        return ",".join(names)

    @property
    def enabled_strategies(self) -> frozenset[str]:
        return frozenset(STRATEGY_NAMES if self.strategies == "all"
                         else self.strategies.split(","))

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.max_queue_samples < self.max_batch_samples:
            raise ValueError("DYDC_MAX_QUEUE_SAMPLES must be at least DYDC_MAX_BATCH_SAMPLES")
        return self


class _CompileSettings(BaseSettings):
    """Compiled forward mode: when it runs, its builds, their cache and checks."""

    model_config = _CONFIG

    compile: bool = Field(
        True, description="Run forward mode (forward, auto; order 1 and 2) through "
        "torch.compile for launches of at least DYDC_COMPILE_MIN_SAMPLES samples; needs a C++ "
        "compiler on the CPU (Triton on CUDA), and falls back to eager forward mode without one."
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
    compile_build_idle: bool = Field(
        True, description="Run the build process under Linux's SCHED_IDLE policy as well: it "
        "then gets only CPU time that nothing else wants, so a build never slows serving. "
        "false where the host is never idle and builds would not finish.")
    compile_build_share: Annotated[float, Field(gt=0, le=1)] = Field(
        0.25, description="While a large request (DYDC_COMPILE_MIN_SAMPLES samples or more, "
        "or a body of 1 MiB or more) is served, and for 250 ms after, the build process runs "
        "only this share of the time: it and its compilers are stopped and continued in turns "
        "of 40 ms, so that a build beside it costs the request little even where CPUs share "
        "a core. 1: never stopped.")
    compile_hot_launches: Count = Field(
        100, description="A kind (routine, wrt, dtype, parameters shared or per sample, "
        "order) launched this many times is compiled too, and its launches smaller than "
        "DYDC_COMPILE_MIN_SAMPLES then run through its graph: the device worker's share of a "
        "small request drops about 10x. 0: small launches stay eager."
    )
    compile_recheck_every: PositiveInt = Field(
        1000, description="A compiled graph's first launch and every this many after it are "
        "compared with eager forward mode on a few rows; a mismatch retires the graph."
    )

    @field_validator("compile_cache_dir", mode="before")
    @classmethod
    def _compile_cache_dir(cls, v: object) -> object:
        # empty is unset (the default), not the current directory
        return None if isinstance(v, str) and not v.strip() else v


class _HttpSettings(BaseSettings):
    """The operator's HTTP concerns: logging, API keys, CORS and response compression."""

    model_config = _CONFIG

    log_level: str = Field("info", description="Python logging level.")
    access_log: bool = Field(True, description="Write a line per request (DYDC_LOG_FORMAT).")
    log_format: str = Field(
        "text", description="Access log: text (a line per request) or json (one JSON object a "
        "line, fields as in the README)."
    )
    api_keys: str = Field(
        "", description="Comma-separated API keys; when set (or DYDC_API_KEYS_FILE), every "
        "route except health needs one."
    )
    api_keys_file: str | None = Field(
        None, description="A file of API keys, one a line (blank lines and # comments skipped)."
    )
    public_metrics: bool = Field(True, description="/metrics needs no key.")
    public_docs: bool = Field(True, description="/docs, /openapi.json and their assets need "
                              "no key.")
    cors_origins: str = Field(
        "", description="Comma-separated origins allowed by CORS (* for any); empty: CORS off."
    )
    gzip_min_bytes: Count = Field(
        65_536, description="JSON answers of at least this many bytes (and at most "
        "DYDC_COMPRESS_MAX_BYTES) are compressed for clients that accept it: zstd where offered, "
        "else gzip. 0 turns response compression off."
    )
    gzip_level: Annotated[int, Field(ge=1, le=9)] = Field(
        1, description="zlib level for gzip responses (1 fastest .. 9 smallest)."
    )
    compress_max_bytes: Count = Field(
        1_048_576, description="JSON answers larger than this are sent uncompressed: "
        "compressing them costs more time than the wire saves on fast links "
        "(docs/benchmarks.md). Raise it for clients behind slow links."
    )
    zstd_level: Annotated[int, Field(ge=1, le=22)] = Field(
        1, description="zstd level for zstd responses (1 fastest .. 22 smallest)."
    )

    @model_validator(mode="after")
    def _compression_bounds(self) -> Self:
        if self.gzip_min_bytes and self.compress_max_bytes < self.gzip_min_bytes:
            raise ValueError(
                f"DYDC_COMPRESS_MAX_BYTES ({self.compress_max_bytes}) is below "
                f"DYDC_GZIP_MIN_BYTES ({self.gzip_min_bytes}), so no answer would ever be "
                "compressed; raise it, or set DYDC_GZIP_MIN_BYTES=0 to turn compression off")
        return self

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, v: str) -> str:
        if v.lower() not in {"critical", "error", "warning", "info", "debug"}:
            raise ValueError("DYDC_LOG_LEVEL must be critical, error, warning, info or debug")
        return v.lower()

    @field_validator("log_format")
    @classmethod
    def _log_format(cls, v: str) -> str:
        if v.lower() not in {"text", "json"}:
            raise ValueError("DYDC_LOG_FORMAT must be text or json")
        return v.lower()

    @field_validator("api_keys_file")
    @classmethod
    def _api_keys_file(cls, v: str | None) -> str | None:
        if v:
            try:
                _read_keys(Path(v).read_text())
            except OSError as exc:
                raise ValueError(f"DYDC_API_KEYS_FILE cannot be read ({exc.strerror}); "
                                 "give a readable file of keys, one a line") from None
            except UnicodeDecodeError:
                raise ValueError("DYDC_API_KEYS_FILE is not text (not UTF-8); give a text "
                                 "file of keys, one a line") from None
        return v or None

    @property
    def api_key_set(self) -> frozenset[str]:
        """Every accepted key: DYDC_API_KEYS and the lines of DYDC_API_KEYS_FILE."""
        keys = _listed_keys(self.api_keys)
        if self.api_keys_file:
            keys |= _read_keys(Path(self.api_keys_file).read_text())
        return keys

    @model_validator(mode="after")
    def _keys_that_protect(self) -> Self:
        """Keys asked for but none given would leave every route open: refused, as is a key
        no client could send (a space inside, a control or non-ASCII character)."""
        if not (self.api_keys.strip() or self.api_keys_file):
            return self
        keys = self.api_key_set
        if not keys:
            raise ValueError(
                "DYDC_API_KEYS or DYDC_API_KEYS_FILE is set but holds no key (blank, commas, "
                "or only # comments in the file), which would leave every route open; give "
                "at least one key, or unset both to run without keys")
        unsendable = sum(1 for key in keys if not _sendable(key))
        if unsendable:
            raise ValueError(
                f"{unsendable} of the {len(keys)} API keys hold a space, a control or a "
                "non-ASCII character, which no client can send in a header (Bearer <key>); "
                "use visible ASCII only (letters, digits and punctuation)")
        return self

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]


class _ExpressionSettings(BaseSettings):
    """Bounds on the expressions callers send."""

    model_config = _CONFIG

    expression_max_chars: PositiveInt = Field(
        4096, description="Longest expression (or ODE right-hand side) a caller may send, in "
        "characters (422 above)."
    )
    expression_max_nodes: PositiveInt = Field(
        1000, description="Most nodes (numbers, names, operations, calls) in one expression "
        "(422 above)."
    )
    expression_max_depth: Annotated[int, Field(gt=0, le=200)] = Field(
        64, description="Deepest nesting of operations and calls in one expression (422 above; "
        "at most 200, Python's parser's own limit on nested parentheses)."
    )
    expression_max_ode_steps: PositiveInt = Field(
        10_000, description="Most fixed steps of an ODE expression (422 above): its cost grows "
        "with them."
    )
    expression_max_exponent: Annotated[float, Field(gt=0)] = Field(
        64.0, description="Largest literal exponent, in absolute value, in ** or pow() of an "
        "expression (422 above)."
    )
    expression_cache: PositiveInt = Field(
        256, description="Parsed expressions kept (least recently used dropped first), so "
        "that parsing stays off the hot path."
    )


class Settings(_ServerSettings, _LimitSettings, _CompileSettings, _HttpSettings,
               _ExpressionSettings):
    """Every setting: one class per group above, combined; each field is read from
    ``DYDC_<NAME>``."""

    model_config = _CONFIG


def settings_error(exc: ValidationError) -> str:
    """One line naming each bad variable, its value and what is allowed."""
    parts = []
    for error in exc.errors():
        message = str(error["msg"]).removeprefix("Value error, ")
        if not error["loc"]:  # a rule across settings: its message names them
            parts.append(message)
            continue
        field = str(error["loc"][0])
        variable = f"DYDC_{field.upper()}"
        if variable in message:  # our own validators name the variable and what is allowed
            parts.append(f"{variable}={error['input']!r}: {message}")
            continue
        info = Settings.model_fields[field]
        allowed = f"{info.description} Default: {info.default!r}" if info.description else ""
        parts.append(f"{variable}={error['input']!r}: {message.lower()} ({allowed})")
    return "invalid settings: " + "; ".join(parts)


def load_settings() -> Settings:
    """Settings from the environment; a bad value ends the process with one line on stderr
    (no traceback), for ``python -m app`` and ``uvicorn app.main:app`` alike."""
    try:
        return Settings()
    except ValidationError as exc:
        line = settings_error(exc)
    except SettingsError as exc:  # a value pydantic-settings could not even decode
        line = f"invalid settings: {exc}"
    print(f"dydc: {line}", file=sys.stderr, flush=True)
    raise SystemExit(2)
