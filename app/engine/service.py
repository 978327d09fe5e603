"""The engine: validates a request against its routine, queues it, awaits the answer.

Protocol-neutral: callers hand it names, numbers and arrays, and get back tensors or an
:class:`~app.engine.errors.EngineError` that says what to change.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import math
import sys
import time
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import cast

import numpy as np
import torch

from app import metrics
from app.engine.admission import CostModel
from app.engine.bumping import Bump, validate_bump
from app.engine.capabilities import cap_refusal, refusal, supports_order2, supports_per_sample
from app.engine.checking import Check, differences
from app.engine.comparison import Comparison, compare
from app.engine.compute import Executor
from app.engine.errors import (
    CostExceeded,
    DeadlineExceeded,
    GraphBuilding,
    InvalidRequest,
    RequestTooLarge,
    StrategyCapExceeded,
    StrategyDisabled,
    UnknownRoutine,
    listed,
)
from app.engine.input_sensitivities import features_in, with_features_as_params
from app.engine.jobs import Job, JobKind, JobResult
from app.engine.strategies import STRATEGIES, Problem, Strategy
from app.engine.worker import WorkerPool
from routines import Routine

__all__ = [
    "DTYPES",
    "MIN_TIMEOUT_MS",
    "Engine",
    "Limits",
    "StrategyInfo",
    "cache_host_allocations",
    "load_torch_extensions",
    "warm_up",
]

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class StrategyInfo:
    strategy: Strategy
    cap: int | None
    cap_setting: str | None
    enabled: bool = True
    order2: bool = False  # computes second derivatives
    per_sample_params: bool = False  # takes per-sample parameters and input features in wrt


def _as_float(v: float) -> float:
    try:
        return float(v)
    except OverflowError:  # an integer beyond float64: reported as not finite
        return math.inf if v > 0 else -math.inf


def _index(flat: int, shape: tuple[int, ...]) -> str:
    return "".join(f"[{i}]" for i in np.unravel_index(flat, shape))


ParamValue = float | Sequence[float] | np.ndarray


def _describe(v: object) -> str:
    return json.dumps(v) if isinstance(v, (str, bool)) or v is None else type(v).__name__


def _interval(bounds: tuple[float | None, float | None] | None) -> str:
    low, high = bounds or (None, None)
    return f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"


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
    if bounds is not None:
        low, high = bounds
        bad = np.zeros(n, dtype=bool)
        if low is not None:
            bad |= a < low
        if high is not None:
            bad |= a > high
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InvalidRequest(
                f"params.{name}[{i}] = {a[i]} is outside its bounds {_interval(bounds)}")
    return a if a.flags.writeable else a.copy()


def load_torch_extensions(compiled: bool = False) -> None:
    """Import what torch loads lazily on the first dual number and the first compiled graph,
    on the calling (main) thread: those imports warn (torch.jit.script and script_method are
    deprecated), and a worker thread must not touch the process-wide warning filters to hide
    them. With ``compiled``, also what loading a built graph first does: its imports (2.4 s
    here) and the probe of the CPU's vector instructions (0.8 s, compiling with g++), which
    would otherwise stall the service when the first graph is loaded."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import torch._decomp.decompositions_for_jvp
        import torch.fx.experimental.optimization  # Inductor's, via mkldnn

        if compiled:
            import torch._inductor.package  # noqa: F401
            from torch._inductor.cpu_vec_isa import pick_vec_isa

            pick_vec_isa()  # cached for the process


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def cache_host_allocations() -> bool:
    """Keep large freed host buffers in the process for the next tensor.

    glibc serves every block over 128 KiB with a fresh mmap and unmaps it on free, so each
    large tensor (8 MB for a million float64 samples) pays a page fault per 4 KiB page when
    it is first written: on a virtual machine that made allocation a large part of a launch,
    and forward mode, which allocates tangents beside values, paid it most (measured: eager
    forward on linear at N = 1e6 went from 6.2 ms to 1.8 ms). This is the host-side
    counterpart of CUDA's caching allocator. The cost is memory: the heap keeps its high-water
    mark. Returns False where it does not apply (not glibc).
    """
    if sys.platform != "linux":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    # the largest mmap threshold glibc accepts on 64-bit (32 MiB); trim only above 1 GiB free
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)) and bool(
        mallopt(_M_TRIM_THRESHOLD, 2**30))


def warm_up(routines: Mapping[str, Routine], executor: Executor,
            costs: CostModel | None = None, compile: bool = False) -> None:
    """Run every routine once on the executor's device, as strategy=auto would, so the first
    request pays no one-off costs, and measure its cost there for admission (``costs``); with
    ``compile``, also build (or load from the cache directory) every routine's compiled
    forward mode for one large request in each dtype (all parameters, shared), at order 1 and
    order 2 (no cross terms), and return once they are loaded or refused. Launches run under
    the transforms lock: another worker may already be serving; the builds run in their own
    process."""
    from app.engine.compute import TRANSFORMS_LOCK, differentiate
    from app.engine.strategies import Problem

    device = executor.device
    compiled = executor.compiled if compile else None
    large: list[Problem] = []
    for r in routines.values():
        params = {p.name: torch.tensor(p.default, dtype=torch.float64, device=device)
                  for p in r.params}
        x = torch.ones(2, len(r.inputs), dtype=torch.float64, device=device)
        try:
            with TRANSFORMS_LOCK:
                differentiate(Problem(r, x, params, r.param_names), "auto")
                if costs is not None:
                    costs.measure(r, device)
        except Exception as exc:  # a routine undefined at ones is not a broken device
            log.warning("warm-up of routine %s skipped: %s", r.name, exc)
            continue
        if compiled is None:
            continue
        n = compiled.min_samples
        # rows near ones (where the routine was just run), not all equal
        rows = 1 + 0.25 * torch.rand(n, len(r.inputs), dtype=torch.float64,
                                     generator=torch.Generator().manual_seed(0))
        for dtype in DTYPES.values():
            large.append(Problem(r, rows.to(device, dtype),
                                 {k: v.to(dtype) for k, v in params.items()}, r.param_names))
    if compiled is not None:
        compiled.warm_up(large, device, orders=(1, 2))
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _passes(job: Job) -> int:
    """How many first-order passes a job's derivatives cost: one per name in wrt, one per
    pair at order 2, and a check by bumping costs about as much again."""
    p = len(job.wrt)
    if job.order == 2:
        p += p * (p + 1) // 2 if job.cross else p
    return p * (2 if job.check is not None else 1)


class Engine:
    def __init__(self, routines: Mapping[str, Routine], limits: Limits, worker: WorkerPool,
                 costs: CostModel | None = None):
        self.routines = dict(routines)
        self.limits = limits
        self.worker = worker
        self.costs = costs if costs is not None else CostModel(limits.max_job_cost_s)
        # one set of compiled graphs (and one build process) shared by the devices
        self._compiled = next((w.executor.compiled for w in worker.workers
                               if w.executor.compiled is not None), None)

    # -- state -------------------------------------------------------------------------------

    @property
    def devices(self) -> list[torch.device]:
        return self.worker.devices

    def large(self, samples: int) -> bool:
        """Whether a request of this many samples is one that compiled graphs are for
        (DYDC_COMPILE_MIN_SAMPLES and over), with compiling on."""
        return self._compiled is not None and samples >= self._compiled.min_samples

    def serving_large(self) -> contextlib.AbstractContextManager[None]:
        """Around the serving of a large request: graphs being built meanwhile step aside
        (their build process runs only a share of the time, app.engine.pacing)."""
        if self._compiled is None:
            return contextlib.nullcontext()
        return self._compiled.serving_large()

    def readiness(self) -> str | None:
        """None when every device worker is up and warm; else why not."""
        return self.worker.not_ready_reason()

    # -- catalogue ---------------------------------------------------------------------------

    def routine(self, name: str) -> Routine:
        try:
            return self.routines[name]
        except KeyError:
            raise UnknownRoutine(name, sorted(self.routines)) from None

    def strategies(self) -> list[StrategyInfo]:
        out = []
        for s in STRATEGIES.values():
            setting, cap = self.limits.caps.get(s.name, (None, None))
            out.append(StrategyInfo(s, cap, setting, s.name in self.limits.enabled,
                                    supports_order2(s.name), supports_per_sample(s.name)))
        return out

    # -- validation --------------------------------------------------------------------------

    def _enabled(self) -> list[str]:
        return [name for name in STRATEGIES if name in self.limits.enabled]

    def _strategy(self, name: str, any_strategy: bool = False) -> str:
        if name not in STRATEGIES:
            raise InvalidRequest(
                f"unknown strategy {name!r}; use one of: {', '.join(self._enabled())}"
            )
        if name not in self.limits.enabled and not any_strategy:
            raise StrategyDisabled(
                f"strategy {name} is turned off on this server (DYDC_STRATEGIES); use one of: "
                f"{', '.join(self._enabled())}"
            )
        return name

    def _dtype(self, name: str) -> torch.dtype:
        if name not in DTYPES:
            raise InvalidRequest(f"dtype {name!r} is not supported; use float64 or float32")
        return DTYPES[name]

    def _params(self, routine: Routine, given: Mapping[str, ParamValue],
                n: int) -> dict[str, float | np.ndarray]:
        unknown = sorted(set(given) - set(routine.param_names))
        if unknown:
            raise InvalidRequest(
                f"routine {routine.name} has no parameter {listed(unknown, quoted=True)}; "
                f"its parameters are: {', '.join(routine.param_names)}"
            )
        values: dict[str, float | np.ndarray] = {}
        for p in routine.params:
            v = given.get(p.name, p.default)
            if isinstance(v, (list, tuple, np.ndarray)):
                values[p.name] = _per_sample(p.name, v, n, p.bounds)
                continue
            if type(v) not in (int, float) and not isinstance(v, (np.floating, np.integer)):
                raise InvalidRequest(f"params.{p.name} is {_describe(v)}; send a number, or a "
                                     "list of one number per sample")
            f = _as_float(cast(float, v))  # a number: lists are handled above
            if not math.isfinite(f):
                raise InvalidRequest(f"params.{p.name} is {f}; parameters must be finite numbers")
            if p.violates_bounds(f):
                raise InvalidRequest(f"params.{p.name} = {f} is outside its bounds "
                                     f"{_interval(p.bounds)}")
            values[p.name] = f
        return values

    def _wrt(self, routine: Routine, wrt: Sequence[str] | None) -> tuple[str, ...]:
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
                f"of routine {routine.name}; its parameters are: "
                f"{', '.join(routine.param_names)}; its inputs are: {', '.join(routine.inputs)}"
            )
        if len(set(wrt)) != len(wrt):
            twice = [w for w, count in Counter(wrt).items() if count > 1]
            raise InvalidRequest(f"wrt lists a parameter twice: {listed(twice, quoted=True)}; "
                                 "name each once")
        return tuple(wrt)

    def _inputs(self, routine: Routine, inputs: np.ndarray | torch.Tensor,
                dtype: torch.dtype) -> torch.Tensor:
        d = len(routine.inputs)
        a = inputs.numpy(force=True) if isinstance(inputs, torch.Tensor) else np.asarray(inputs)
        if a.ndim == 1 and d == 1:
            a = a.reshape(-1, 1)
        elif a.ndim == 1 and a.shape[0] > 0:
            raise InvalidRequest(
                f"routine {routine.name} takes {d} features per sample "
                f"({', '.join(routine.inputs)}); send inputs as a list of rows of {d} numbers"
            )
        n = int(a.shape[0])
        if n == 0:
            raise InvalidRequest("inputs is empty; send at least one sample")
        if a.ndim != 2 or a.shape[1] != d:
            got = a.shape[1] if a.ndim == 2 else f"shape {tuple(a.shape)}"
            raise InvalidRequest(
                f"routine {routine.name} takes {d} features per sample "
                f"({', '.join(routine.inputs)}); inputs rows have {got}"
            )
        if n > self.limits.max_samples:
            raise RequestTooLarge(
                f"inputs has {n} samples; the limit is {self.limits.max_samples} per request "
                "(DYDC_MAX_SAMPLES): split the batch"
            )
        name = str(dtype).removeprefix("torch.")
        if a.dtype != np.dtype(name) or not a.flags.c_contiguous:
            with np.errstate(over="ignore"):  # float32 overflow is reported below, by element
                a = np.ascontiguousarray(a, dtype=np.dtype(name))
        finite = np.isfinite(a)
        if not finite.all():
            flat = int(np.flatnonzero(~finite)[0])
            where = _index(flat, (n, d)) if d > 1 else f"[{flat}]"
            raise InvalidRequest(
                f"inputs{where} is not finite in {name}; inputs must be finite numbers"
            )
        if not a.flags.writeable:  # a view of a request body: torch wants its own buffer
            a = a.copy()
        return torch.from_numpy(a)

    def _cap(self, strategy: str, n: int) -> None:
        reason = cap_refusal(strategy, n, self.limits.caps)
        if reason is not None:
            raise StrategyCapExceeded(reason)

    def _beyond_first(self, routine: Routine, strategy: str, job: Job,
                      bump: Bump | None) -> Job:
        """Order, cross, per-sample values, bumps and the check: each refused with what to
        change when the strategy cannot honour it."""
        if job.order not in (1, 2) or isinstance(job.order, bool):
            raise InvalidRequest(f"order = {job.order!r}; use 1 or 2")
        if job.cross and job.order != 2:
            raise InvalidRequest("cross applies to second derivatives; send order: 2 with it")
        per_sample = bool(features_in(routine, job.wrt)) or any(
            isinstance(v, np.ndarray) for v in job.params.values())
        reason = refusal(strategy, routine, order=job.order, per_sample=per_sample)
        if reason is not None:
            raise InvalidRequest(reason)
        if job.check is not None and job.check != "finite-difference":
            raise InvalidRequest(f"check = {job.check!r}; the one check is finite-difference")
        if bump is not None and strategy != "finite-difference" and job.check is None:
            raise InvalidRequest(
                "shift, shift_type and scheme configure bumps: use them with "
                "strategy=finite-difference or check=finite-difference")
        if strategy == "finite-difference" or job.check is not None:
            bump = bump or Bump()
            validate_bump(with_features_as_params(Problem(
                routine, job.inputs, {k: torch.as_tensor(v, dtype=job.dtype)
                                      for k, v in job.params.items()}, job.wrt)),
                bump, job.order)
            return replace(job, bump=bump)
        return job

    def _within_cap(self, strategy: str, n: int) -> bool:
        return strategy not in self.limits.caps or n <= self.limits.caps[strategy][1]

    def _cheaper(self, routine: Routine, n: int, p: int, cost: float) -> str:
        """The cheapest enabled strategy for this request, as advice in a refusal."""
        options = sorted(
            (self.costs.estimate(routine, name, n, p), name) for name in self._enabled()
            if name != "auto" and self._within_cap(name, n))
        for estimate, name in options:
            if estimate < cost and estimate <= self.limits.max_job_cost_s:
                return f"use strategy={name} (about {estimate:.3g} s), or split the batch"
        return "split the batch"

    def _cost(self, routine: Routine, strategy: str | None, n: int, p: int,
              cost: float | None = None, how: str = "") -> float:
        """``cost`` (default: the model's estimate), unless it is over DYDC_MAX_JOB_COST."""
        if cost is None:
            cost = self.costs.estimate(routine, strategy, n, p)
        if cost > self.limits.max_job_cost_s:
            metrics.REJECTIONS.labels("cost").inc()
            what = f"strategy {strategy}" if strategy else "evaluation"
            raise CostExceeded(
                f"{what} of routine {routine.name} at N = {n} with {p} parameter(s) is "
                f"estimated at {cost:.3g} s of device time{how}, over the limit of "
                f"{self.limits.max_job_cost_s:g} s (DYDC_MAX_JOB_COST); "
                f"{self._cheaper(routine, n, p, cost)}"
            )
        return cost

    def _compilable(self, routine: Routine, strategy: str, job: Job) -> Problem | None:
        """The job as a problem that compiled forward mode serves (forward or auto, at least
        DYDC_COMPILE_MIN_SAMPLES samples, a kind not refused), else None."""
        compiled = self._compiled
        if (compiled is None or strategy not in ("auto", "forward") or job.check is not None
                or job.n < compiled.min_samples or not routine.compile):
            return None
        problem = with_features_as_params(Problem(
            routine, job.inputs, {k: torch.as_tensor(v, dtype=job.dtype)
                                  for k, v in job.params.items()}, job.wrt))
        if compiled.refused(problem, job.order, job.cross, self.devices[0]) is not None:
            return None
        return problem

    def _admit(self, routine: Routine, strategy: str, job: Job) -> float:
        """The job's price, held to DYDC_MAX_JOB_COST: what its launch takes through the
        compiled graph of its kind where one is loaded (its first launch at the price of plain
        evaluation, which a fused graph does not exceed by much: bench_strategies), else at
        eager speed. A job over the limit eagerly whose kind a graph would serve starts that
        graph's build and is told when to retry (503), rather than refused for good."""
        p = _passes(job)
        problem = self._compilable(routine, strategy, job)
        if problem is None:
            return self._cost(routine, strategy, job.n, p)
        assert self._compiled is not None
        device = self.devices[0]
        seconds = self._compiled.launch_seconds(problem, device, job.order, job.cross)
        if seconds is not None:
            measured = seconds > 0
            cost = seconds if measured else self.costs.estimate(routine, None, job.n, 1)
            return self._cost(routine, strategy, job.n, p, cost,
                              " through its compiled graph" + ("" if measured else
                                                               " (plain evaluation's time)"))
        eager = self.costs.estimate(routine, strategy, job.n, p)
        if eager <= self.limits.max_job_cost_s:
            return eager  # (its launch asks for the graph, as every large launch does)
        self._compiled.request(problem, job.order, job.cross, device)
        if self._compiled.refused(problem, job.order, job.cross, device) is not None:
            return self._cost(routine, strategy, job.n, p, eager)  # (DYDC_COMPILE_MAX_GRAPHS)
        plain = self.costs.estimate(routine, None, job.n, 1)
        retry_s = self._compiled.typical_build_s()
        metrics.REJECTIONS.labels("cost").inc()
        raise GraphBuilding(
            f"strategy {strategy} of routine {routine.name} at N = {job.n} is estimated at "
            f"{eager:.3g} s of device time in eager forward mode, over the limit of "
            f"{self.limits.max_job_cost_s:g} s (DYDC_MAX_JOB_COST); a compiled graph for it is "
            f"being built (about {retry_s:.0f} s): retry then, when it is priced at the "
            f"graph's speed (plain evaluation takes about {plain:.3g} s), or split the batch",
            retry_after_s=retry_s)

    def prepare(
        self,
        kind: JobKind,
        routine_name: str | Routine,
        inputs: np.ndarray | torch.Tensor,
        params: Mapping[str, ParamValue],
        *,
        wrt: Sequence[str] | None = None,
        strategy: str = "auto",
        dtype: str = "float64",
        timeout_ms: float | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        order: int = 1,
        cross: bool = False,
        bump: Bump | None = None,
        check: str | None = None,
        any_strategy: bool = False,
    ) -> Job:
        """Check everything that can be checked before the device sees it; build the Job.

        A parameter is a number or one number per sample. ``timeout_ms`` shortens the default
        deadline (DYDC_REQUEST_TIMEOUT_MS), never extends it. ``order``, ``cross``, ``bump``
        and ``check`` apply to sensitivities only. ``loop`` is the event loop that will await
        the job, when this runs in another thread. ``any_strategy`` admits a strategy the
        server does not serve (compare prepares its request as finite differences, then runs
        only the strategies served). A :class:`Routine` in place of a name is run as given,
        registered or not (a caller's expression, app.expressions).
        """
        if timeout_ms is not None and not (math.isfinite(timeout_ms)
                                           and timeout_ms >= MIN_TIMEOUT_MS):
            raise InvalidRequest(
                f"timeout_ms = {timeout_ms:g}; use a number of ms of at least "
                f"{MIN_TIMEOUT_MS:g} (a shorter deadline cannot be met)")
        routine = (routine_name if isinstance(routine_name, Routine)
                   else self.routine(routine_name))
        sensitivities = kind is JobKind.SENSITIVITIES
        chosen = self._strategy(strategy, any_strategy) if sensitivities else None
        torch_dtype = self._dtype(dtype)
        wrt_names = self._wrt(routine, wrt) if sensitivities else ()
        x = self._inputs(routine, inputs, torch_dtype)
        values = self._params(routine, params, int(x.shape[0]))
        if chosen is not None:
            self._cap(chosen, x.shape[0])
        job = Job(
            kind=kind,
            routine=routine,
            inputs=x,
            params=values,
            wrt=wrt_names,
            strategy=chosen,
            dtype=torch_dtype,
            future=(loop or asyncio.get_running_loop()).create_future(),
            deadline=time.perf_counter() + min(self.limits.timeout_s,
                                               (timeout_ms or math.inf) / 1e3),
            order=order if sensitivities else 1,
            cross=cross if sensitivities else False,
            check=check if sensitivities else None,
        )
        if chosen is not None:
            job = self._beyond_first(routine, chosen, job, bump)
        if any_strategy:
            job.cost_s = self.costs.estimate(routine, chosen, job.n, _passes(job))
        elif chosen is None:
            job.cost_s = self._cost(routine, chosen, job.n, _passes(job))
        else:
            job.cost_s = self._admit(routine, chosen, job)
        return job

    # -- running -----------------------------------------------------------------------------

    def _expire(self, job: Job) -> None:
        """At the deadline: a job still queued is taken back and answered 504; a heavy job
        already running is stopped by its worker at its next slice (504), and a launch in
        progress gets its answer."""
        if not job.future.done() and self.worker.withdraw(job):
            metrics.REJECTIONS.labels("deadline").inc()
            job.future.set_exception(DeadlineExceeded(time.perf_counter() - job.enqueued_at))

    async def run(self, job: Job) -> JobResult:
        """Queue the job and await its answer. A job still queued at its deadline is taken
        back and answered DeadlineExceeded; one already running gets its answer."""
        self.worker.submit(job)
        assert job.deadline is not None
        timer = asyncio.get_running_loop().call_later(
            max(0.0, job.deadline - time.perf_counter()), self._expire, job)
        try:
            result = await job.future
        except asyncio.CancelledError:  # the client went away: do not compute for nobody
            # awaiting it, the cancelled task cancelled the future too: a worker running it
            # sees that at its next slice and stops
            if self.worker.withdraw(job):
                metrics.CANCELLED.labels("disconnect").inc()
            raise
        finally:
            timer.cancel()
        label = result.strategy or "none"
        # a routine not registered (a caller's expression) under one label: callers' texts
        # must not grow the metrics without bound
        name = job.routine.name if job.routine.name in self.routines else "expression"
        metrics.child(metrics.COMPUTE_SECONDS, name, label).observe(result.compute_s)
        metrics.child(metrics.SAMPLES, name, label).inc(job.n)
        if job.check is not None:
            result = await self._checked(job, result)
        return result

    async def compare(self, job: Job) -> Comparison:
        """Every strategy that applies on the request (prepared with
        strategy=finite-difference), against forward mode (app.engine.comparison)."""
        return await compare(self, job)

    def again(self, job: Job, strategy: str, bump: Bump | None = None,
              check: str | None = None) -> Job:
        """The same request under another strategy, as a new job with its own future."""
        again = replace(job, strategy=strategy, bump=bump, check=check,
                        future=asyncio.get_running_loop().create_future(),
                        enqueued_at=time.perf_counter())
        again.cost_s = self.costs.estimate(job.routine, strategy, job.n, _passes(again))
        return again

    def unaffordable(self, job: Job, strategy: str) -> str | None:
        """Why this server would not run ``job`` under ``strategy`` (turned off, or over
        the cost limit), or None."""
        if strategy not in self.limits.enabled:
            return f"strategy {strategy} is turned off on this server (DYDC_STRATEGIES)"
        cost = self.costs.estimate(job.routine, strategy, job.n, _passes(job))
        if cost > self.limits.max_job_cost_s:
            return (f"estimated at {cost:.3g} s of device time, over the limit of "
                    f"{self.limits.max_job_cost_s:g} s (DYDC_MAX_JOB_COST)")
        return None

    async def _checked(self, job: Job, result: JobResult) -> JobResult:
        """The answer with its AD-vs-bump check: the same request by finite differences."""
        bumped = await self.run(self.again(job, "finite-difference", job.bump))
        assert job.bump is not None
        abs_diff, rel_diff = differences(
            {**result.derivatives, **result.second_derivatives},
            {**bumped.derivatives, **bumped.second_derivatives})
        return replace(result, check=Check("finite-difference", abs_diff, rel_diff,
                                           job.bump.echo(job.dtype, job.order)))
