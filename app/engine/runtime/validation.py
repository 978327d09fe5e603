"""Checking a request against its routine and this server's limits, before the device sees it:
each check raises an :class:`~app.engine.errors.EngineError` that says what to change, and
returns the value in the form the engine keeps (a torch dtype, a tuple of names, a float64
array per sample, a dense tensor of inputs: rows or columns in memory)."""

from __future__ import annotations

import difflib
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import cast

import numpy as np
import torch

from app.engine.differentiation.bumping import Bump, validate_bump
from app.engine.differentiation.capabilities import cap_refusal, refusal
from app.engine.differentiation.input_sensitivities import with_features_as_params
from app.engine.differentiation.problem import Problem
from app.engine.differentiation.strategies import AUTO_FALLBACK, STRATEGIES
from app.engine.errors import (
    InvalidRequest,
    NotFiniteInput,
    RequestTooLarge,
    StrategyCapExceeded,
    StrategyDisabled,
    listed,
)
from app.engine.runtime.jobs import Job
from app.engine.runtime.request import ParamValue
from routines import Routine

__all__ = [
    "DTYPES",
    "MIN_TIMEOUT_MS",
    "Limits",
    "beyond_first",
    "check_cap",
    "checked_dtype",
    "checked_inputs",
    "checked_order",
    "checked_params",
    "checked_strategy",
    "checked_timeout",
    "checked_wrt",
    "first_not_finite",
    "first_outside",
    "interval",
]

MIN_TIMEOUT_MS = 1.0
"""The shortest deadline a request may ask for (``timeout_ms``; v2 ``timeout`` is in µs):
shorter ones are refused as invalid (422), never queued to expire as an overload would."""

DTYPES: dict[str, torch.dtype] = {"float64": torch.float64, "float32": torch.float32}


@dataclass(frozen=True)
class Limits:
    max_samples: int
    caps: Mapping[str, tuple[str, int]]  # strategy -> (setting name, cap on N)
    timeout_s: float = 30.0  # default deadline of a request; clients may shorten it
    enabled: frozenset[str] = frozenset(STRATEGIES)  # DYDC_STRATEGIES
    max_job_cost_s: float = math.inf  # DYDC_MAX_JOB_COST


def _as_float(v: float) -> float:
    try:
        return float(v)
    except OverflowError:  # an integer beyond float64: reported as not finite
        return math.inf if v > 0 else -math.inf


def _index(flat: int, shape: tuple[int, ...]) -> str:
    return "".join(f"[{i}]" for i in np.unravel_index(flat, shape))


def _describe(v: object) -> str:
    return json.dumps(v) if isinstance(v, (str, bool)) or v is None else type(v).__name__


def interval(bounds: tuple[float | None, float | None] | None) -> str:
    low, high = bounds or (None, None)
    return f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"


def first_outside(values: np.ndarray, bounds: tuple[float | None, float | None] | None
                  ) -> int | None:
    """The index of the first value outside ``bounds`` (either end may be open), or None."""
    if bounds is None:
        return None
    low, high = bounds
    bad = np.zeros(values.shape, dtype=bool)
    if low is not None:
        bad |= values < low
    if high is not None:
        bad |= values > high
    return int(np.flatnonzero(bad)[0]) if bad.any() else None


def first_not_finite(values: float | np.ndarray, dtype: torch.dtype) -> int | None:
    """The (flat) index of the first of ``values`` that is not a finite number in ``dtype``,
    or None: float64 numbers past float32's largest are inf once they run in float32."""
    flat = np.asarray(values).reshape(-1)
    bad = ~np.isfinite(flat)
    if dtype != torch.float64:
        bad |= np.abs(flat) > torch.finfo(dtype).max
    return int(np.flatnonzero(bad)[0]) if bad.any() else None


def _per_sample(name: str, given: Sequence[float] | np.ndarray, n: int,
                bounds: tuple[float | None, float | None] | None) -> np.ndarray:
    """One float64 value per sample, each finite and within the bounds; the message names the
    element (params.sigma[17])."""
    if len(given) != n:
        raise InvalidRequest(
            f"params.{name} has {len(given)} values, but inputs has {n} samples; send one "
            "number, shared by every sample, or a list of one number per sample")
    if not isinstance(given, np.ndarray) and not set(map(type, given)) <= {int, float}:
        i, v = next((i, v) for i, v in enumerate(given) if type(v) not in (int, float))
        raise InvalidRequest(f"params.{name}[{i}] is {_describe(v)}; send a number")
    try:
        a = np.asarray(given, dtype=np.float64)
    except OverflowError:
        raise InvalidRequest(f"params.{name} has a number too large for float64") from None
    if a.ndim != 1:
        raise InvalidRequest(f"params.{name} has shape {list(a.shape)}; send a flat list of {n}")
    finite = np.isfinite(a)
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        raise InvalidRequest(f"params.{name}[{i}] is {a[i]}; parameters must be finite numbers")
    outside = first_outside(a, bounds)
    if outside is not None:
        raise InvalidRequest(f"params.{name}[{outside}] = {a[outside]} is outside its bounds "
                             f"{interval(bounds)}")
    return a if a.flags.writeable else a.copy()


def enabled(limits: Limits) -> list[str]:
    """The strategies this server serves, in the table's order."""
    return [name for name in STRATEGIES if name in limits.enabled]


def checked_timeout(timeout_ms: float | None) -> None:
    """At least MIN_TIMEOUT_MS; longer ones, inf included, are capped at the server's own
    (DYDC_REQUEST_TIMEOUT_MS) where the deadline is set. NaN is refused."""
    if timeout_ms is not None and not timeout_ms >= MIN_TIMEOUT_MS:
        raise InvalidRequest(
            f"timeout_ms = {timeout_ms:g}; use a number of ms of at least "
            f"{MIN_TIMEOUT_MS:g} (a shorter deadline cannot be met)")


def checked_strategy(name: str, limits: Limits, any_strategy: bool = False) -> str:
    if name not in STRATEGIES:
        served = enabled(limits)
        raise InvalidRequest(
            f"unknown strategy {name!r}{_close_to(name, served)}; "
            f"use one of: {', '.join(served)}"
        )
    if name not in limits.enabled and not any_strategy:
        raise StrategyDisabled(
            f"strategy {name} is turned off on this server (DYDC_STRATEGIES); use one of: "
            f"{', '.join(enabled(limits))}"
        )
    return _auto_within(limits) if name == "auto" and not any_strategy else name


# Of an unknown strategy's name, what is compared with the served ones (a query value may be
# kilobytes long; app.errors cuts the one the refusal quotes).
_NAME_AT_MOST = 64


def _close_to(name: str, served: Sequence[str]) -> str:
    """A hint at the served strategy ``name`` was meant to be, if one is close: the brief's
    words and Python's spelling (``reverse_loop``, ``Finite differences``) are common."""
    spelled = name[:_NAME_AT_MOST].strip().lower().replace("_", "-").replace(" ", "-")
    close = difflib.get_close_matches(spelled, served, n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _auto_within(limits: Limits) -> str:
    """What ``auto`` may run on this server: forward mode, falling back to AUTO_FALLBACK where
    forward mode lacks a formula; of the two, only those DYDC_STRATEGIES serves."""
    forward, fallback = "forward" in limits.enabled, AUTO_FALLBACK in limits.enabled
    if forward and fallback:
        return "auto"
    if forward or fallback:
        return "forward" if forward else AUTO_FALLBACK
    raise StrategyDisabled(
        f"strategy auto runs forward (or {AUTO_FALLBACK} where forward mode lacks a formula), "
        f"both turned off on this server (DYDC_STRATEGIES); name one of: "
        f"{', '.join(n for n in enabled(limits) if n != 'auto')}")


def checked_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise InvalidRequest(f"dtype {name!r} is not supported; use float64 or float32")
    return DTYPES[name]


def _within_dtype(name: str, values: float | np.ndarray, dtype: torch.dtype) -> None:
    """A parameter the request's dtype cannot hold (1e39 in float32) is the request's
    mistake, said as such (it came back as the routine's non-finite value)."""
    if dtype == torch.float64:  # (finite, checked already: every request, on the hot path)
        return
    i = first_not_finite(values, dtype)
    if i is not None:
        where = f"[{i}]" if np.ndim(values) else ""
        raise InvalidRequest(
            f"params.{name}{where} = {np.asarray(values).reshape(-1)[i]:g} is not finite in "
            f"{str(dtype).removeprefix('torch.')} (largest {torch.finfo(dtype).max:.4g}); "
            "send a smaller value, or use dtype float64")


def checked_params(routine: Routine, given: Mapping[str, ParamValue], n: int,
                   dtype: torch.dtype = torch.float64) -> dict[str, float | np.ndarray]:
    unknown = sorted(set(given) - set(routine.param_names))
    if unknown:
        raise InvalidRequest(
            f"{routine.called} has no parameter {listed(unknown, quoted=True)}; "
            f"its parameters are: {', '.join(routine.param_names)}"
        )
    values: dict[str, float | np.ndarray] = {}
    for p in routine.params:
        v = given.get(p.name, p.default)
        if isinstance(v, (list, tuple, np.ndarray)):
            values[p.name] = _per_sample(p.name, v, n, p.bounds)
            _within_dtype(p.name, values[p.name], dtype)
            continue
        if type(v) not in (int, float) and not isinstance(v, (np.floating, np.integer)):
            raise InvalidRequest(f"params.{p.name} is {_describe(v)}; send a number, or a "
                                 "list of one number per sample")
        f = _as_float(cast(float, v))  # a number: lists are handled above
        if not math.isfinite(f):
            raise InvalidRequest(f"params.{p.name} is {f}; parameters must be finite numbers")
        if p.violates_bounds(f):
            raise InvalidRequest(f"params.{p.name} = {f} is outside its bounds "
                                 f"{interval(p.bounds)}")
        _within_dtype(p.name, f, dtype)
        values[p.name] = f
    return values


def checked_wrt(routine: Routine, wrt: Sequence[str] | None) -> tuple[str, ...]:
    if wrt is None:
        return routine.param_names
    if not wrt:
        raise InvalidRequest(
            "wrt is empty; name at least one parameter, or omit wrt to differentiate "
            f"with respect to all of {', '.join(routine.param_names)} (or call /evaluate)"
        )
    unknown = [w for w in wrt if w not in routine.param_names
               and not (w in routine.inputs and w.isidentifier())]
    if unknown:
        raise InvalidRequest(
            f"wrt names {listed(unknown, quoted=True)}, neither a parameter nor an input "
            f"of {routine.called}; its parameters are: "
            f"{', '.join(routine.param_names)}; its inputs are: {', '.join(routine.inputs)}"
        )
    if len(set(wrt)) != len(wrt):
        twice = [w for w, count in Counter(wrt).items() if count > 1]
        raise InvalidRequest(f"wrt names {listed(twice, quoted=True)} more than once; "
                             "name each once")
    return tuple(wrt)


def checked_inputs(routine: Routine, inputs: np.ndarray | torch.Tensor, dtype: torch.dtype,
                   max_samples: int) -> torch.Tensor:
    d = len(routine.inputs)
    a = inputs.numpy(force=True) if isinstance(inputs, torch.Tensor) else np.asarray(inputs)
    if a.ndim == 1 and d == 1:
        a = a.reshape(-1, 1)
    elif a.ndim == 1 and a.shape[0] > 0:
        raise InvalidRequest(
            f"{routine.called} takes {d} features per sample "
            f"({', '.join(routine.inputs)}); send inputs as a list of rows of {d} numbers"
        )
    n = int(a.shape[0])
    if n == 0:
        raise InvalidRequest("inputs is empty; send at least one sample")
    if a.ndim != 2 or a.shape[1] != d:
        got = a.shape[1] if a.ndim == 2 else f"shape {tuple(a.shape)}"
        raise InvalidRequest(
            f"{routine.called} takes {d} feature{'s' if d > 1 else ''} per sample "
            f"({', '.join(routine.inputs)}); inputs rows have {got}"
        )
    if n > max_samples:
        raise RequestTooLarge(
            f"inputs has {n} samples; the limit is {max_samples} per request "
            "(DYDC_MAX_SAMPLES): split the batch"
        )
    name = str(dtype).removeprefix("torch.")
    if a.dtype != np.dtype(name) or not (a.flags.c_contiguous or a.flags.f_contiguous):
        # rows decoded from JSON are columns in memory (app.api.decoding._to_array), which a
        # compiled graph takes as they are: a conversion keeps that layout
        columns = a.flags.f_contiguous and not a.flags.c_contiguous
        with np.errstate(over="ignore"):  # float32 overflow is reported below, by element
            a = np.asarray(a, dtype=np.dtype(name), order="F" if columns else "C")
    finite = np.isfinite(a)
    if not finite.all():
        flat = int(np.flatnonzero(~finite)[0])  # (a row-major index whatever the layout)
        where = _index(flat, (n, d)) if d > 1 else f"[{flat}]"
        raise NotFiniteInput(
            f"inputs{where} is not finite in {name}; inputs must be finite numbers",
            *divmod(flat, d), name)
    if not a.flags.writeable:  # a view of a request body: torch wants its own buffer
        a = a.copy(order="K")
    return torch.from_numpy(a)


def check_cap(strategy: str, n: int, limits: Limits) -> None:
    reason = cap_refusal(strategy, n, limits.caps, limits.enabled)
    if reason is not None:
        raise StrategyCapExceeded(reason)


def checked_order(order: int, cross: bool) -> None:
    if order not in (1, 2) or isinstance(order, bool):
        raise InvalidRequest(f"order = {order!r}; use 1 or 2")
    if cross and order != 2:
        raise InvalidRequest("cross applies to second derivatives; send order: 2 with it")


def beyond_first(routine: Routine, strategy: str, job: Job, bump: Bump | None) -> Job:
    """Order, cross, per-sample values, bumps and the check: each refused with what to
    change when the strategy cannot honour it."""
    checked_order(job.order, job.cross)
    reason = refusal(strategy, routine, order=job.order, per_sample=job.per_sample)
    if reason is not None:
        raise InvalidRequest(reason)
    if job.check is not None and job.check != "finite-difference":
        raise InvalidRequest(f"check = {job.check!r}; the one check is finite-difference")
    if bump is not None and strategy != "finite-difference" and job.check is None:
        raise InvalidRequest(
            "shift, shift_type and scheme configure bumps: use them with "
            "strategy=finite-difference or check=finite-difference")
    if strategy == "finite-difference" or job.check is not None:
        bump = validate_bump(with_features_as_params(Problem(
            routine, job.inputs, {k: torch.as_tensor(v, dtype=job.dtype)
                                  for k, v in job.params.items()}, job.wrt)),
            bump or Bump(), job.order)
        return replace(job, bump=bump)
    return job
