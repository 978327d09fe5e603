"""Scenarios: a book revalued under shifted parameters and input features in one launch, and
its P&L explained by the base's Taylor terms (ORE's sensitivity and stress analysis, Strata's
scenario framework). Knows nothing of HTTP.

A scenario shifts some factors (parameters or input features), each by an absolute amount or
by a fraction of its base value. S scenarios of a book of N samples are one evaluation job of
S x N samples with per-sample values (the machinery batching already has), priced, queued,
sliced and cancelled like any job; the base is a job of its own, a sensitivities job of the
explain's order when the P&L is explained (its values are the base then). The two run side by
side.

The explain of scenario s for sample i, with shifts d_a (absolute, after conversion) and the
base's derivatives, is the Taylor prediction

    delta_pnl = sum_a dy/da d_a
    gamma_pnl = 1/2 sum_a d2y/da2 d_a^2 + sum_{a<b} d2y/da db d_a d_b

(the cross terms with ``cross`` only), and ``unexplained`` = pnl - delta_pnl - gamma_pnl.

Hand-written: ORE and Strata are not Python libraries; the arithmetic is a few lines of
tensor algebra over what the engine computes anyway.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from app.engine.differentiation.bumping import pair_key, pairs
from app.engine.errors import InvalidRequest, NonFinite, RoutineFailed, listed
from app.engine.runtime.jobs import Job, JobResult
from app.engine.runtime.validation import (
    checked_order,
    checked_wrt,
    first_not_finite,
    first_outside,
    interval,
)
from routines import Routine

__all__ = ["OFF_LOOP_SAMPLES", "ScenarioPlan", "ScenarioResult", "Shift", "check_factors",
           "check_unexplained_options", "expand", "plan", "run"]

ABSOLUTE, RELATIVE = "absolute", "relative"
# From this many samples in all (scenarios x N) the arithmetic over them (planning the
# shifted samples, the P&L and its explain, the answer) runs in a thread: numpy and torch
# let go of the interpreter's lock there, and other requests' answers go on meanwhile (1,000
# scenarios of 2,000 samples held the event loop for hundreds of milliseconds).
OFF_LOOP_SAMPLES = 1 << 16
COMBINE = ("product", "zip")


@dataclass(frozen=True)
class Shift:
    """One factor's shift in one scenario, as asked: ``kind`` absolute or relative."""

    kind: str
    value: float


Scenario = dict[str, Shift]  # factor -> its shift
# the engine's S x N evaluation job over shifted samples (Engine.over), and its run
_Over = Callable[[Tensor, dict[str, "float | np.ndarray"]], Job]
_RunJob = Callable[[Job], Awaitable[JobResult]]


def expand(shifts: Mapping[str, tuple[str, Sequence[float]]] | None, combine: str | None,
           listed_scenarios: Sequence[Mapping[str, float]] | None,
           max_scenarios: int) -> list[Scenario]:
    """The scenarios of a request: the ``product`` (every combination, the default: None)
    or the ``zip`` (the i-th shift of every factor) of per-factor shift lists, or an explicit
    list of absolute shifts. Refuses what cannot be meant (InvalidRequest, saying what to
    change)."""
    if (shifts is None) == (listed_scenarios is None):
        raise InvalidRequest("scenarios takes either shifts (per factor: type and values) or "
                             "list (one object of absolute shifts per scenario), not both "
                             "and not neither")
    if listed_scenarios is not None:
        if combine not in (None, "product"):  # (ignored, it had said what was not done;
            # the default is taken as it is: a body may well spell it out)
            raise InvalidRequest(f"scenarios.combine = {combine!r} combines the factors' "
                                 "shifts; a list gives every scenario's shifts itself: leave "
                                 "combine out")
        if not listed_scenarios:
            raise InvalidRequest("scenarios.list is empty; give at least one scenario")
        count = len(listed_scenarios)
        _within(count, max_scenarios)
        out = []
        for s, given in enumerate(listed_scenarios):
            if not given:
                raise InvalidRequest(f"scenarios.list[{s}] shifts nothing; name at least one "
                                     "factor")
            out.append({f: Shift(ABSOLUTE, _finite(v, f"scenarios.list[{s}].{f}"))
                        for f, v in given.items()})
        return out
    assert shifts is not None
    if not shifts:
        raise InvalidRequest("scenarios.shifts is empty; shift at least one factor")
    combine = combine or "product"
    if combine not in COMBINE:
        raise InvalidRequest(f"scenarios.combine = {combine!r}; use product or zip")
    lists: dict[str, list[Shift]] = {}
    for factor, (kind, values) in shifts.items():
        if kind not in (ABSOLUTE, RELATIVE):
            raise InvalidRequest(f"scenarios.shifts.{factor}.type = {kind!r}; use absolute "
                                 "or relative")
        if not values:
            raise InvalidRequest(f"scenarios.shifts.{factor}.values is empty; give at least "
                                 "one shift")
        lists[factor] = [Shift(kind, _finite(v, f"scenarios.shifts.{factor}.values[{i}]"))
                         for i, v in enumerate(values)]
    factors = list(lists)
    if combine == "zip":
        lengths = {f: len(v) for f, v in lists.items()}
        if len(set(lengths.values())) > 1:
            raise InvalidRequest(
                "scenarios.combine = zip takes the i-th shift of every factor, so every list "
                "must be as long: " + ", ".join(f"{f} has {n}" for f, n in lengths.items())
                + "; make them equal, or use combine = product")
        count = next(iter(lengths.values()))
        _within(count, max_scenarios)
        return [{f: lists[f][i] for f in factors} for i in range(count)]
    count = math.prod(len(v) for v in lists.values())
    _within(count, max_scenarios)
    return [dict(zip(factors, combo, strict=True))
            for combo in itertools.product(*(lists[f] for f in factors))]


def check_factors(routine: Routine, scenarios: list[Scenario]) -> None:
    """Every shifted factor is a parameter or an input feature of ``routine``."""
    factors = {f for scenario in scenarios for f in scenario}
    unknown = sorted(f for f in factors
                     if f not in routine.param_names and f not in routine.inputs)
    if unknown:
        raise InvalidRequest(
            f"scenarios shift {listed(unknown, quoted=True)}, neither a parameter nor an input "
            f"of {routine.called}; its parameters are: {', '.join(routine.param_names)}; "
            f"its inputs are: {', '.join(routine.inputs)}")


def check_unexplained_options(routine: Routine, wrt: Sequence[str] | None, order: int,
                              cross: bool) -> None:
    """Without the explain, ``wrt``, ``order`` and ``cross`` go unused; a value that is
    wrong whatever the request (an unknown or repeated factor, an empty wrt, order 3, cross
    at order 1) is refused all the same, as the explain would refuse it."""
    if wrt is not None:
        checked_wrt(routine, wrt)
    checked_order(order, cross)


def _finite(value: float, where: str) -> float:
    try:
        v = float(value)
    except OverflowError:  # an integer of hundreds of digits
        raise InvalidRequest(f"{where} is an integer too large for a float; shifts must be "
                             "finite numbers") from None
    if not math.isfinite(v):
        raise InvalidRequest(f"{where} is {v}; shifts must be finite numbers")
    return v


def _within(count: int, max_scenarios: int) -> None:
    if count > max_scenarios:
        raise InvalidRequest(f"{count} scenarios; the limit is {max_scenarios} per request "
                              "(DYDC_MAX_SCENARIOS): split the scenarios over requests")


@dataclass
class ScenarioPlan:
    """What ``run`` needs: the base job, the job of every scenario's samples, and each
    scenario's absolute shifts per factor (a number, or one per sample)."""

    base: Job
    shifted: Job
    scenarios: list[Scenario]
    absolute: list[dict[str, float | np.ndarray]]
    explain: bool


def plan(routine: Routine, base: Job, scenarios: list[Scenario], shifted: _Over,
         *, max_samples: int, explain: bool) -> ScenarioPlan:
    """The scenarios over the base job's samples (its inputs and parameters validated, the
    scenarios' factors known: :func:`check_factors`, which the caller runs before it prepares
    the explain's base, whose wrt defaults to them): every shifted value finite and every
    shifted parameter within its bounds (the message names the scenario and the sample),
    S x N within DYDC_MAX_SAMPLES;
    ``shifted`` makes the S x N evaluation job from the shifted inputs and parameters, which
    are not validated again.

    The inputs are laid out as columns, (D, S x N) contiguous, and handed over transposed:
    a compiled graph takes its inputs as columns, so the launch does not copy them again."""
    n, s_count = base.n, len(scenarios)
    if n * s_count > max_samples:
        raise InvalidRequest(
            f"{s_count} scenarios x {n} samples = {n * s_count} samples to revalue; the limit "
            f"is {max_samples} samples in all (DYDC_MAX_SAMPLES): send fewer scenarios or "
            "samples per request")
    x = base.inputs.numpy()  # (N, D), validated
    cols = np.empty((x.shape[1], s_count, n), dtype=x.dtype)
    cols[:] = np.ascontiguousarray(x.T)[:, None, :]  # every scenario starts from the book
    moving: dict[str, list[float | np.ndarray]] = {}  # shifted parameters: one per scenario
    absolute: list[dict[str, float | np.ndarray]] = []
    bounds = {p.name: p for p in routine.params}
    param_names = routine.param_names
    for s, scenario in enumerate(scenarios):
        shifts: dict[str, float | np.ndarray] = {}
        for factor, shift in scenario.items():
            is_param = factor in param_names
            value = base.params[factor] if is_param else x[:, routine.inputs.index(factor)]
            if shift.kind != ABSOLUTE and shift.value != 0 and not np.any(value):
                raise InvalidRequest(
                    f"scenario {s} shifts {factor} by a relative {shift.value}, but "
                    f"{factor} is 0{'' if np.ndim(value) == 0 else ' in every sample'}, "
                    "where a relative shift moves nothing; give its shifts as absolute")
            with np.errstate(over="ignore", invalid="ignore"):  # reported below, by sample
                moved = value + (shift.value if shift.kind == ABSOLUTE
                                 else shift.value * value)
            _check_finite(factor, moved, s, base.dtype)
            if is_param:
                # as it runs: a parameter moves in float64 and runs in the job's dtype, where
                # 1 + 1e-9 is 1 in float32 (its shift was explained, and left unexplained)
                value, moved = _as_run(value, base.dtype), _as_run(moved, base.dtype)
                param = bounds[factor]
                if param.bounds is not None:
                    _check_bounds(param.name, param.bounds, moved, s)
                # every scenario at the base until it moves
                moving.setdefault(factor, [value] * s_count)[s] = moved
            else:
                cols[routine.inputs.index(factor), s] = moved
            shifts[factor] = moved - value
        absolute.append(shifts)
    params: dict[str, float | np.ndarray] = {
        name: (_per_sample(moving[name], n) if name in moving
               else np.tile(v, s_count) if isinstance(v, np.ndarray) else v)
        for name, v in base.params.items()}
    inputs = torch.from_numpy(cols.reshape(x.shape[1], s_count * n)).t()
    return ScenarioPlan(base, shifted(inputs, params), scenarios, absolute, explain)


def _as_run(value: float | np.ndarray, dtype: torch.dtype) -> float | np.ndarray:
    """``value`` (float64) rounded to ``dtype``, as the launch will take it."""
    if dtype == torch.float64:
        return value
    kind = np.dtype(str(dtype).removeprefix("torch."))
    if isinstance(value, np.ndarray):
        return value.astype(kind).astype(np.float64)
    return float(kind.type(value))


def _per_sample(per_scenario: list[float | np.ndarray], n: int) -> np.ndarray:
    """A parameter's S x N values from its value in each scenario (a number, or one a
    sample), written once: one number a scenario (a book at one parameter value) is
    repeated N times."""
    if not any(isinstance(v, np.ndarray) for v in per_scenario):
        return np.repeat(np.asarray(per_scenario, dtype=np.float64), n)
    out = np.empty((len(per_scenario), n), dtype=np.float64)
    for s, v in enumerate(per_scenario):
        out[s] = v
    return out.reshape(-1)


def _check_finite(name: str, moved: float | np.ndarray, scenario: int,
                  dtype: torch.dtype = torch.float64) -> None:
    """Finite in the job's dtype: a parameter moves in float64 and runs in the job's dtype
    (1e39 was finite here and inf in float32, blamed on the routine's domain)."""
    # one number for all samples (checked once), or one a sample
    i = first_not_finite(moved, dtype)
    if i is not None:
        raise InvalidRequest(
            f"scenario {scenario} moves {name} of sample {i} to "
            f"{np.asarray(moved).reshape(-1)[i]}, not a finite number in "
            f"{str(dtype).removeprefix('torch.')}; use a smaller shift")


def _check_bounds(name: str, bounds: tuple[float | None, float | None],
                  moved: float | np.ndarray, scenario: int) -> None:
    values = np.asarray(moved, dtype=np.float64).reshape(-1)  # one number, or one a sample
    i = first_outside(values, bounds)
    if i is not None:
        raise InvalidRequest(
            f"scenario {scenario} moves {name} of sample {i} to {values[i]}, outside its "
            f"bounds {interval(bounds)}; use a smaller shift")


@dataclass
class ScenarioResult:
    """Values (N, M) at the base and (S, N, M) under the scenarios, the P&L, and with the
    explain its Taylor terms, each (S, N, M)."""

    base: JobResult
    values: Tensor
    pnl: Tensor
    delta_pnl: Tensor | None = None
    gamma_pnl: Tensor | None = None
    unexplained: Tensor | None = None
    compute_s: float = 0.0
    queue_s: float = 0.0  # the longer of the two jobs' waits in the queue
    # each of pnl and the explain's terms summed over the samples, (S, M): a portfolio's
    totals: dict[str, Tensor] = field(default_factory=dict)


async def run(plan: ScenarioPlan, run_job: _RunJob) -> ScenarioResult:
    """Both jobs side by side (``run_job`` is the engine's run), then the P&L and its
    explain."""
    base, shifted = await asyncio.gather(run_job(plan.base), run_job(plan.shifted),
                                         return_exceptions=True)
    if isinstance(base, BaseException):
        raise base
    if isinstance(shifted, NonFinite):
        raise _in_scenario_terms(plan, shifted) from None
    if isinstance(shifted, BaseException):
        raise shifted
    if plan.base.n * len(plan.scenarios) >= OFF_LOOP_SAMPLES:
        return await asyncio.to_thread(_outcome, plan, base, shifted)
    return _outcome(plan, base, shifted)


def _outcome(plan: ScenarioPlan, base: JobResult, shifted: JobResult) -> ScenarioResult:
    """The P&L of every scenario, its explain and the totals, from the two jobs' results."""
    n, s_count = plan.base.n, len(plan.scenarios)
    values = shifted.values.reshape(s_count, n, -1)
    pnl = values - base.values
    result = ScenarioResult(base, values, pnl, compute_s=base.compute_s + shifted.compute_s,
                            queue_s=max(base.queue_s, shifted.queue_s))
    if plan.explain:
        result.delta_pnl, result.gamma_pnl = _taylor(plan, base, values.dtype)
        predicted = result.delta_pnl + (result.gamma_pnl if result.gamma_pnl is not None
                                        else 0.0)
        result.unexplained = pnl - predicted
    for name in ("pnl", "delta_pnl", "gamma_pnl", "unexplained"):
        terms = getattr(result, name)
        if terms is not None:
            result.totals[name] = _finite_total(name, terms)
    return result


def _finite_total(name: str, terms: Tensor) -> Tensor:
    """``terms`` (S, N, M) summed over the samples, every term and sum finite: values near
    the dtype's largest give a P&L, a Taylor term or a book's sum beyond it, which JSON would
    carry as null in a 200 (and the tensor form as inf). A finite sum proves its terms finite
    (an infinity or NaN among them makes it not), so the search runs only where one is not."""
    totals = terms.sum(dim=1)
    if bool(torch.isfinite(totals).all()):
        return totals
    dtype = str(terms.dtype).removeprefix("torch.")
    bad = (~torch.isfinite(terms)).nonzero()
    if len(bad):
        s, i = int(bad[0, 0]), int(bad[0, 1])
        raise InvalidRequest(
            f"scenario {s}'s {name} for sample {i} is {float(terms[s, i].reshape(-1)[0])}, "
            f"not a finite number in {dtype}; use smaller shifts, or values further from "
            f"the largest {dtype}")
    s = int((~torch.isfinite(totals)).nonzero()[0, 0])
    raise InvalidRequest(
        f"scenario {s}'s total_{name}, the sum over the samples, is beyond the largest {dtype}; "
        "send the book in smaller parts")


def _in_scenario_terms(plan: ScenarioPlan, exc: NonFinite) -> RoutineFailed:
    """A non-finite number of the S x N revaluation named by its scenario and sample (row
    s * N + i), with the scenario's shifts."""
    n = plan.base.n
    scenario, i = divmod(exc.sample, n)
    shifts = {name: float(v[i]) if isinstance(v, np.ndarray) else v
              for name, v in plan.absolute[scenario].items()}
    return RoutineFailed(
        f"{plan.base.routine.called} gave a non-finite {exc.what} for sample {i} under "
        f"scenario {scenario} (absolute shifts {shifts}); use smaller shifts, or keep the "
        "shifted values inside its domain")


def _taylor(plan: ScenarioPlan, base: JobResult,
            dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
    """delta_pnl and (order 2) gamma_pnl, each (S, N, M)."""
    job = plan.base
    n, s_count = job.n, len(plan.scenarios)
    # d[a]: (S, N, 1), the absolute shift of factor a in each scenario (0 where unshifted)
    d: dict[str, Tensor] = {}
    for a in job.wrt:
        rows = [torch.as_tensor(np.broadcast_to(shifts.get(a, 0.0), (n,)).copy(), dtype=dtype)
                for shifts in plan.absolute]
        d[a] = torch.stack(rows).reshape(s_count, n, 1)
    delta = sum((base.derivatives[a] * d[a] for a in job.wrt),
                torch.zeros(s_count, *base.values.shape, dtype=dtype))
    if job.order != 2:
        return delta, None
    gamma = torch.zeros_like(delta)
    for a, b in pairs(job.wrt, job.cross):
        term = base.second_derivatives[pair_key(a, b)] * d[a] * d[b]
        gamma += 0.5 * term if a == b else term
    return delta, gamma
