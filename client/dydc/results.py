"""What the service answers, as typed objects with numpy arrays: the same keys as the
service's JSON, whichever protocol carried them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "Bump",
    "Check",
    "Comparison",
    "Limits",
    "Param",
    "Result",
    "RoutineInfo",
    "StrategyInfo",
    "StrategyRow",
    "as_array",
]

Arrays = dict[str, np.ndarray]


def as_array(values: Any, dtype: str) -> np.ndarray:
    """A service array (a flat list of N, or N rows of M) as an ndarray of the result dtype."""
    return np.asarray(values, dtype=np.float32 if dtype == "float32" else np.float64)


def _arrays(doc: Any, dtype: str) -> Arrays:
    return {str(k): as_array(v, dtype) for k, v in (doc or {}).items()}


def _floats(doc: Any) -> dict[str, float]:
    """Numbers by key; null (a relative difference from a reference that is 0 for every
    sample has no value) as NaN."""
    return {str(k): math.nan if v is None else float(v) for k, v in (doc or {}).items()}


def _name(doc: dict[str, Any]) -> str:
    """A catalogue row's name (a TypeError where there is none: not dydc's answer)."""
    name = doc["name"]
    if not isinstance(name, str) or not name:
        raise TypeError(f"name is {name!r}, not a name")
    return name


@dataclass(frozen=True)
class Param:
    name: str
    default: float
    description: str = ""
    bounds: tuple[float | None, float | None] | None = None


@dataclass(frozen=True)
class RoutineInfo:
    """``GET /v1/routines/{name}``."""

    name: str
    description: str
    params: list[Param]
    inputs: list[str]
    outputs: list[str]
    vectorized: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    """Fields this client does not know yet, as sent."""

    @property
    def param_names(self) -> list[str]:
        return [p.name for p in self.params]

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> RoutineInfo:
        known = {"name", "description", "params", "inputs", "outputs", "vectorized"}
        params = [Param(name=p["name"], default=float(p["default"]),
                        description=p.get("description", ""),
                        bounds=tuple(p["bounds"]) if p.get("bounds") else None)
                  for p in doc.get("params", [])]
        return cls(name=_name(doc), description=doc.get("description", ""), params=params,
                   inputs=list(doc.get("inputs", [])), outputs=list(doc.get("outputs", ["y"])),
                   vectorized=bool(doc.get("vectorized", False)),
                   extra={k: v for k, v in doc.items() if k not in known})


@dataclass(frozen=True)
class StrategyInfo:
    """One row of ``GET /v1/strategies``."""

    name: str
    mode: str
    cost: str
    description: str
    cap: int | None
    cap_setting: str | None
    batchable: bool
    enabled: bool = True
    """False where the operator left it out of DYDC_STRATEGIES."""
    order2: bool | None = None
    """Whether it computes second derivatives (None: an older service does not say)."""
    per_sample_params: bool | None = None
    """Whether it takes per-sample parameters and input features in wrt (None: not said)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Fields this client does not know yet, as sent."""

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> StrategyInfo:
        known = {"name", "mode", "cost", "description", "cap", "cap_setting", "batchable",
                 "enabled", "order2", "per_sample_params"}
        return cls(name=_name(doc), mode=doc.get("mode", ""), cost=doc.get("cost", ""),
                   description=doc.get("description", ""), cap=doc.get("cap"),
                   cap_setting=doc.get("cap_setting"), batchable=bool(doc.get("batchable")),
                   enabled=doc.get("enabled") is not False, order2=doc.get("order2"),
                   per_sample_params=doc.get("per_sample_params"),
                   extra={k: v for k, v in doc.items() if k not in known})


@dataclass(frozen=True)
class Limits:
    """``GET /v1/limits``; None where the service does not say (an older service)."""

    max_samples: int | None = None
    max_body_bytes: int | None = None
    max_batch_samples: int | None = None
    max_queue_samples: int | None = None
    request_timeout_ms: float | None = None
    strategy_caps: dict[str, int] = field(default_factory=dict)
    max_response_bytes: int | None = None
    """Largest answer, as the service prices it: N x outputs x arrays x bytes a number."""
    json_number_bytes: int = 25

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Limits:
        return cls(max_samples=_whole(doc.get("max_samples")),
                   max_body_bytes=_whole(doc.get("max_body_bytes")),
                   max_batch_samples=_whole(doc.get("max_batch_samples")),
                   max_queue_samples=_whole(doc.get("max_queue_samples")),
                   request_timeout_ms=_number(doc.get("request_timeout_ms")),
                   strategy_caps={str(k): int(v)
                                  for k, v in (doc.get("strategy_caps") or {}).items()},
                   max_response_bytes=_whole(doc.get("max_response_bytes")),
                   json_number_bytes=int(doc.get("json_number_bytes") or 25))


def _whole(value: Any) -> int | None:
    """A limit as an int (a TypeError or ValueError for what is not one: not dydc's answer)."""
    return None if value is None else int(value)


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class Bump:
    """Bump-and-revalue settings for ``finite-difference``; None leaves the service's default."""

    shift: float | None = None
    shift_type: str | None = None
    """``absolute`` or ``relative`` (h = shift * |value|)."""
    scheme: str | None = None
    """``central``, ``forward`` or ``backward``; in an answer, the scheme that ran (one-sided
    where a bump stepped away from a bound)."""
    schemes: dict[str, list[str]] | None = field(default=None, compare=False)
    """In an answer: per wrt entry, the schemes its steps took."""

    def query(self) -> dict[str, str]:
        return {k: str(v) for k, v in (("shift", self.shift), ("shift_type", self.shift_type),
                                       ("scheme", self.scheme)) if v is not None}

    @classmethod
    def from_json(cls, doc: dict[str, Any] | None) -> Bump | None:
        if not doc:
            return None
        shift = doc.get("shift")
        schemes = doc.get("schemes")
        return cls(shift=None if shift is None else float(shift),
                   shift_type=doc.get("shift_type"), scheme=doc.get("scheme"),
                   schemes=None if schemes is None else {str(k): [str(x) for x in v]
                                                         for k, v in schemes.items()})


@dataclass(frozen=True)
class Check:
    """How far the answer is from finite differences, per derivative key."""

    strategy: str
    max_abs_diff: dict[str, float]
    max_rel_diff: dict[str, float]
    """NaN where the reference is 0 for every sample (the service's null)."""

    @classmethod
    def from_json(cls, doc: dict[str, Any] | None) -> Check | None:
        if not doc:
            return None
        return cls(strategy=doc.get("strategy", "finite-difference"),
                   max_abs_diff=_floats(doc.get("max_abs_diff")),
                   max_rel_diff=_floats(doc.get("max_rel_diff")))


@dataclass
class Result:
    """The answer to ``evaluate`` or ``sensitivities``.

    ``values`` is (N,) when the routine has one output, else (N, M); each derivative is shaped
    like it. ``derivatives`` is keyed by parameter or input name, ``second_derivatives`` by
    ``"a,b"`` (empty at order 1). ``strategy`` is None for ``evaluate``; ``timing_ms`` is None
    over the binary protocol, which does not carry it.
    """

    routine: str
    values: np.ndarray
    derivatives: Arrays = field(default_factory=dict)
    second_derivatives: Arrays = field(default_factory=dict)
    strategy: str | None = None
    dtype: str = "float64"
    device: str = ""
    n: int = 0
    timing_ms: dict[str, float] | None = None
    check: Check | None = None
    bump: Bump | None = None
    params: dict[str, Any] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=lambda: ["y"])
    request_id: str | None = None
    protocol: str = "json"
    chunks: int = 1
    expression: str | None = None
    """For a caller's expression: its canonical text, as the service normalised it."""

    @classmethod
    def from_json(cls, doc: dict[str, Any], request_id: str | None = None) -> Result:
        dtype = doc.get("dtype", "float64")
        return cls(routine=doc["routine"], values=as_array(doc["values"], dtype),
                   derivatives=_arrays(doc.get("derivatives"), dtype),
                   second_derivatives=_arrays(doc.get("second_derivatives"), dtype),
                   strategy=doc.get("strategy"), dtype=dtype, device=doc.get("device", ""),
                   n=int(doc.get("n", len(doc["values"]))), timing_ms=doc.get("timing_ms"),
                   check=Check.from_json(doc.get("check")), bump=Bump.from_json(doc.get("bump")),
                   params=dict(doc.get("params") or {}),
                   outputs=list(doc.get("outputs") or ["y"]), request_id=request_id,
                   expression=doc.get("expression"))


@dataclass(frozen=True)
class StrategyRow:
    """One strategy's run in a comparison: ``ok``, ``skipped`` or ``failed``."""

    strategy: str
    status: str
    reason: str | None
    time_ms: float | None
    max_abs_diff: dict[str, float]
    max_rel_diff: dict[str, float]

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> StrategyRow:
        time_ms = doc.get("time_ms")
        return cls(strategy=doc["strategy"], status=doc.get("status", "ok"),
                   reason=doc.get("reason"), time_ms=None if time_ms is None else float(time_ms),
                   max_abs_diff=_floats(doc.get("max_abs_diff")),
                   max_rel_diff=_floats(doc.get("max_rel_diff")))


@dataclass
class Comparison:
    """``POST /v1/routines/{name}/compare``: every strategy against the reference's answer."""

    routine: str
    n: int
    order: int
    reference: str
    strategies: list[StrategyRow]
    values: np.ndarray
    derivatives: Arrays = field(default_factory=dict)
    second_derivatives: Arrays = field(default_factory=dict)
    request_id: str | None = None
    expression: str | None = None

    @classmethod
    def from_json(cls, doc: dict[str, Any], request_id: str | None = None) -> Comparison:
        dtype = doc.get("dtype", "float64")
        return cls(routine=doc["routine"], n=int(doc["n"]), order=int(doc.get("order", 1)),
                   reference=doc.get("reference", "forward"),
                   strategies=[StrategyRow.from_json(s) for s in doc.get("strategies", [])],
                   values=as_array(doc["values"], dtype),
                   derivatives=_arrays(doc.get("derivatives"), dtype),
                   second_derivatives=_arrays(doc.get("second_derivatives"), dtype),
                   request_id=request_id, expression=doc.get("expression"))
