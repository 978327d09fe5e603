"""The engine: turns a request into a job, queues it on the device workers, awaits the answer.

Protocol-neutral: callers hand it a :class:`~app.engine.runtime.request.Request` (names, numbers and
arrays), and get back tensors or an :class:`~app.engine.errors.EngineError` that says what to
change. What it checks is app.engine.runtime.validation's, what it charges
app.engine.runtime.pricing's; the process's set-up is app.engine.runtime.startup's.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from app import metrics
from app.engine.differentiation.bumping import Bump
from app.engine.differentiation.capabilities import supports_order2, supports_per_sample
from app.engine.differentiation.checking import Check, differences
from app.engine.differentiation.strategies import STRATEGIES, Strategy
from app.engine.errors import StrategyDisabled, UnknownRoutine
from app.engine.runtime.admission import CostModel
from app.engine.runtime.comparison import Comparison, compare
from app.engine.runtime.jobs import Job, JobKind, JobResult
from app.engine.runtime.pricing import Pricing
from app.engine.runtime.request import Request
from app.engine.runtime.validation import (
    Limits,
    beyond_first,
    check_cap,
    checked_dtype,
    checked_inputs,
    checked_params,
    checked_strategy,
    checked_timeout,
    checked_wrt,
)
from app.engine.runtime.worker import WorkerPool
from routines import Routine

__all__ = ["Engine", "StrategyInfo"]


@dataclass(frozen=True)
class StrategyInfo:
    strategy: Strategy
    cap: int | None
    cap_setting: str | None
    enabled: bool = True
    order2: bool = False  # computes second derivatives
    per_sample_params: bool = False  # takes per-sample parameters and input features in wrt


class Engine:
    """Turns a :class:`~app.engine.runtime.request.Request` into a job (checked:
    app.engine.runtime.validation; priced: app.engine.runtime.pricing), queues it on the device
    workers and awaits its answer."""

    def __init__(self, routines: Mapping[str, Routine], limits: Limits, worker: WorkerPool,
                 costs: CostModel | None = None):
        self.routines = dict(routines)
        self.limits = limits
        self.worker = worker
        self.costs = costs if costs is not None else CostModel(limits.max_job_cost_s)
        # one set of compiled graphs (and one build process) shared by the devices
        self._compiled = next((w.executor.compiled for w in worker.workers
                               if w.executor.compiled is not None), None)
        self.pricing = Pricing(self.costs, limits, self._compiled, worker.devices)

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
        (their build process runs only a share of the time, app.engine.compiled.pacing)."""
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

    # -- preparing ---------------------------------------------------------------------------

    def prepare(self, request: Request) -> Job:
        """Check everything that can be checked before the device sees it, and price it;
        the job, not yet queued (:meth:`run` queues it). Safe to call off the event loop: a
        large request is checked in a worker thread."""
        checked_timeout(request.timeout_ms)
        routine = (request.routine if isinstance(request.routine, Routine)
                   else self.routine(request.routine))
        sensitivities = request.kind is JobKind.SENSITIVITIES
        chosen = (checked_strategy(request.strategy, self.limits, request.any_strategy)
                  if sensitivities else None)
        dtype = checked_dtype(request.dtype)
        wrt = checked_wrt(routine, request.wrt) if sensitivities else ()
        if not sensitivities and request.wrt is not None:
            # evaluated without it (one body serves /evaluate and /sensitivities), but a wrt
            # no request could mean is refused all the same, as OpenAPI declares it
            checked_wrt(routine, request.wrt)
        x = checked_inputs(routine, request.inputs, dtype, self.limits.max_samples)
        values = checked_params(routine, request.params, int(x.shape[0]), dtype)
        if chosen is not None:
            check_cap(chosen, x.shape[0], self.limits)
        job = Job(
            kind=request.kind,
            routine=routine,
            inputs=x,
            params=values,
            wrt=wrt,
            strategy=chosen,
            dtype=dtype,
            deadline=time.perf_counter() + min(self.limits.timeout_s,
                                               (request.timeout_ms or math.inf) / 1e3),
            order=request.order if sensitivities else 1,
            cross=request.cross if sensitivities else False,
            check=request.check if sensitivities else None,
        )
        if job.check == "finite-difference" and job.check not in self.limits.enabled \
                and not request.any_strategy:
            raise StrategyDisabled(
                "check=finite-difference runs finite differences, which are turned off on "
                "this server (DYDC_STRATEGIES); leave the check out")
        if chosen is not None:
            job = beyond_first(routine, chosen, job, request.bump)
        job.cost_s = (self.pricing.estimate(job, chosen) if request.any_strategy
                      else self.pricing.price(job))
        return job

    def over(self, job: Job, inputs: Tensor, params: dict[str, float | np.ndarray]) -> Job:
        """``job``, prepared, over other samples that the engine made from its own (a
        scenario's shifted inputs and parameters, checked finite and within bounds where they
        were made), priced anew; not validated again. ``inputs`` (N, D) in the job's dtype
        may be a view of columns (D, N)."""
        over = replace(job, inputs=inputs, params=params, enqueued_at=time.perf_counter())
        over.cost_s = self.pricing.price(over)
        return over

    # -- running -----------------------------------------------------------------------------

    def _expire(self, job: Job) -> None:
        """At the deadline: a job still queued is taken back and answered 504; a heavy job
        already running is stopped by its worker at its next slice (504), and a launch in
        progress gets its answer."""
        if not job.future.done() and self.worker.withdraw(job):
            job.expire(time.perf_counter())

    async def run(self, job: Job | Request) -> JobResult:
        """Queue the job and await its answer; a request is prepared first, here (the codecs
        prepare theirs beforehand, a large one in a worker thread, and price its answer). A
        job still queued at its deadline is taken back and answered DeadlineExceeded; one
        already running gets its answer."""
        if isinstance(job, Request):
            job = self.prepare(job)
        job.future = asyncio.get_running_loop().create_future()
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
        strategy=finite-difference), against forward mode (app.engine.runtime.comparison)."""
        return await compare(self, job)

    def again(self, job: Job, strategy: str, bump: Bump | None = None,
              check: str | None = None) -> Job:
        """The same request under another strategy, as a new job (its own future when it
        runs)."""
        again = replace(job, strategy=strategy, bump=bump, check=check,
                        enqueued_at=time.perf_counter())
        again.cost_s = self.pricing.estimate(again, strategy)
        return again

    def unaffordable(self, job: Job, strategy: str) -> str | None:
        """Why this server would not run ``job`` under ``strategy`` (turned off, over its
        cap, or over the cost limit), or None."""
        if strategy not in self.limits.enabled:
            return f"strategy {strategy} is turned off on this server (DYDC_STRATEGIES)"
        cost = self.pricing.estimate(job, strategy)
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
