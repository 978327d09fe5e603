"""The engine: validates a request against its routine, queues it, awaits the answer.

Protocol-neutral: callers hand it names, numbers and arrays, and get back tensors or an
:class:`~app.engine.errors.EngineError` that says what to change.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import math
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from app import metrics
from app.engine.compiled import CompiledForward
from app.engine.errors import (
    DeadlineExceeded,
    InvalidRequest,
    RequestTooLarge,
    StrategyCapExceeded,
    UnknownRoutine,
)
from app.engine.jobs import Job, JobKind, JobResult
from app.engine.strategies import STRATEGIES, Strategy
from app.engine.worker import WorkerPool
from routines import Routine

__all__ = [
    "DTYPES",
    "Engine",
    "Limits",
    "StrategyInfo",
    "cache_host_allocations",
    "load_torch_extensions",
    "warm_up",
]

log = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {"float64": torch.float64, "float32": torch.float32}


@dataclass(frozen=True)
class Limits:
    max_samples: int
    caps: Mapping[str, tuple[str, int]]  # strategy -> (setting name, cap on N)
    timeout_s: float = 30.0  # default deadline of a request; clients may shorten it


@dataclass(frozen=True)
class StrategyInfo:
    strategy: Strategy
    cap: int | None
    cap_setting: str | None


def _as_float(v: float) -> float:
    try:
        return float(v)
    except OverflowError:  # an integer beyond float64: reported as not finite
        return math.inf if v > 0 else -math.inf


def _index(flat: int, shape: tuple[int, ...]) -> str:
    return "".join(f"[{i}]" for i in np.unravel_index(flat, shape))


def load_torch_extensions() -> None:
    """Import what torch loads lazily on the first dual number and the first compiled graph,
    on the calling (main) thread: those imports warn (torch.jit.script and script_method are
    deprecated), and a worker thread must not touch the process-wide warning filters to hide
    them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import torch._decomp.decompositions_for_jvp
        import torch.fx.experimental.optimization  # noqa: F401  (Inductor's, via mkldnn)


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


def warm_up(routines: Mapping[str, Routine], device: torch.device,
            compiled: CompiledForward | None = None) -> None:
    """Run every routine once, as strategy=auto would, so the first request pays no one-off
    costs; with ``compiled``, also build (or load from the cache directory) every routine's
    compiled forward mode for one large request in each dtype (all parameters, shared), and
    return once they are loaded or refused. Launches run under the transforms lock: another
    worker may already be serving; the builds run in their own process."""
    from app.engine.compute import TRANSFORMS_LOCK, differentiate
    from app.engine.strategies import Problem

    large: list[Problem] = []
    for r in routines.values():
        params = {p.name: torch.tensor(p.default, dtype=torch.float64, device=device)
                  for p in r.params}
        x = torch.ones(2, len(r.inputs), dtype=torch.float64, device=device)
        try:
            with TRANSFORMS_LOCK:
                differentiate(Problem(r, x, params, r.param_names), "auto")
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
        compiled.warm_up(large, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Engine:
    def __init__(self, routines: Mapping[str, Routine], limits: Limits, worker: WorkerPool):
        self.routines = dict(routines)
        self.limits = limits
        self.worker = worker

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
            out.append(StrategyInfo(s, cap, setting))
        return out

    # -- validation --------------------------------------------------------------------------

    def _strategy(self, name: str) -> str:
        if name not in STRATEGIES:
            raise InvalidRequest(
                f"unknown strategy {name!r}; use one of: {', '.join(STRATEGIES)}"
            )
        return name

    def _dtype(self, name: str) -> torch.dtype:
        if name not in DTYPES:
            raise InvalidRequest(f"dtype {name!r} is not supported; use float64 or float32")
        return DTYPES[name]

    def _params(self, routine: Routine, given: Mapping[str, float]) -> dict[str, float]:
        unknown = sorted(set(given) - set(routine.param_names))
        if unknown:
            raise InvalidRequest(
                f"routine {routine.name} has no parameter {', '.join(map(repr, unknown))}; "
                f"its parameters are: {', '.join(routine.param_names)}"
            )
        values = {p.name: _as_float(given.get(p.name, p.default)) for p in routine.params}
        for p in routine.params:
            v = values[p.name]
            if not math.isfinite(v):
                raise InvalidRequest(f"params.{p.name} is {v}; parameters must be finite numbers")
            if p.violates_bounds(v):
                low, high = p.bounds or (None, None)
                raise InvalidRequest(
                    f"params.{p.name} = {v} is outside its bounds "
                    f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
                )
        return values

    def _wrt(self, routine: Routine, wrt: Sequence[str] | None) -> tuple[str, ...]:
        if wrt is None:
            return routine.param_names
        if not wrt:
            raise InvalidRequest(
                "wrt is empty; name at least one parameter, or omit wrt to differentiate "
                f"with respect to all of {', '.join(routine.param_names)} (or call /evaluate)"
            )
        unknown = [w for w in wrt if w not in routine.param_names]
        if unknown:
            raise InvalidRequest(
                f"wrt names {', '.join(map(repr, unknown))}, not a parameter of routine "
                f"{routine.name}; its parameters are: {', '.join(routine.param_names)}"
            )
        if len(set(wrt)) != len(wrt):
            raise InvalidRequest(f"wrt lists a parameter twice: {list(wrt)}")
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
        if strategy not in self.limits.caps:
            return
        setting, cap = self.limits.caps[strategy]
        if n > cap:
            raise StrategyCapExceeded(
                f"strategy {strategy} is capped at N = {cap} samples (DYDC_{setting.upper()}); "
                f"this request has N = {n}. Use strategy=forward (one pass, no cap), or split "
                "the batch"
            )

    def prepare(
        self,
        kind: JobKind,
        routine_name: str,
        inputs: np.ndarray | torch.Tensor,
        params: Mapping[str, float],
        *,
        wrt: Sequence[str] | None = None,
        strategy: str = "auto",
        dtype: str = "float64",
        timeout_ms: float | None = None,
    ) -> Job:
        """Check everything that can be checked before the device sees it; build the Job.

        ``timeout_ms`` shortens the default deadline (DYDC_REQUEST_TIMEOUT_MS), never extends it.
        """
        if timeout_ms is not None and not (math.isfinite(timeout_ms) and timeout_ms > 0):
            raise InvalidRequest(f"timeout_ms = {timeout_ms}; use a positive number of ms")
        routine = self.routine(routine_name)
        sensitivities = kind is JobKind.SENSITIVITIES
        chosen = self._strategy(strategy) if sensitivities else None
        torch_dtype = self._dtype(dtype)
        values = self._params(routine, params)
        wrt_names = self._wrt(routine, wrt) if sensitivities else ()
        x = self._inputs(routine, inputs, torch_dtype)
        if chosen is not None:
            self._cap(chosen, x.shape[0])
        return Job(
            kind=kind,
            routine=routine,
            inputs=x,
            params=values,
            wrt=wrt_names,
            strategy=chosen,
            dtype=torch_dtype,
            future=asyncio.get_running_loop().create_future(),
            deadline=time.perf_counter() + min(self.limits.timeout_s,
                                               (timeout_ms or math.inf) / 1e3),
        )

    # -- running -----------------------------------------------------------------------------

    def _expire(self, job: Job) -> None:
        """At the deadline: a job still queued is taken back and answered 504; one already
        running keeps its place and gets its answer."""
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
            self.worker.withdraw(job)
            raise
        finally:
            timer.cancel()
        label = result.strategy or "none"
        metrics.child(metrics.COMPUTE_SECONDS, job.routine.name, label).observe(result.compute_s)
        metrics.child(metrics.SAMPLES, job.routine.name, label).inc(job.n)
        return result
