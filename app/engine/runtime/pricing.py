"""What a request costs, and whether this server will pay it: every job is priced in seconds
of device time before it is queued (the cost model's estimate for its strategy, or what a
compiled graph of its kind measured), and refused with what to change when it is over
DYDC_MAX_JOB_COST; a job that only a graph not yet built would make affordable starts that
build and is told when to retry."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from app import metrics
from app.engine.compiled.forward import CompiledForward, runs_through_graphs
from app.engine.differentiation.capabilities import refusal
from app.engine.differentiation.input_sensitivities import with_features_as_params
from app.engine.differentiation.problem import Problem
from app.engine.errors import CostExceeded, GraphBuilding
from app.engine.runtime.admission import CostModel
from app.engine.runtime.jobs import Job
from app.engine.runtime.validation import Limits, enabled
from routines import Routine

__all__ = ["Pricing", "pairs", "passes"]


def passes(job: Job) -> int:
    """A job's first-order derivatives: one per name in wrt (a check by bumping costs about
    as much again)."""
    return len(job.wrt) * (2 if job.check is not None else 1)


def pairs(job: Job) -> int:
    """A job's second-order derivatives: every unordered pair of wrt with ``cross``, else
    the diagonal (none at order 1), priced by the cost model at what its strategy's mode
    pays for one (admission.PAIR_WEIGHT)."""
    if job.order != 2:
        return 0
    p = len(job.wrt)
    return (p * (p + 1) // 2 if job.cross else p) * (2 if job.check is not None else 1)


class Pricing:
    """Prices jobs for one engine: its cost model, its limits, and the compiled graphs
    shared by its devices (None without compiling)."""

    def __init__(self, costs: CostModel, limits: Limits, compiled: CompiledForward | None,
                 devices: Sequence[torch.device]) -> None:
        self.costs = costs
        self.limits = limits
        self._compiled = compiled
        self.devices = devices

    def price(self, job: Job) -> float:
        """The job's price in seconds of device time, held to DYDC_MAX_JOB_COST."""
        return self._admit(job.routine, job.strategy, job)

    def estimate(self, job: Job, strategy: str | None) -> float:
        """The cost model's estimate for ``job`` under ``strategy``, not held to the limit."""
        return self.costs.estimate(job.routine, strategy, job.n, passes(job), pairs(job))

    def _within_cap(self, strategy: str, n: int) -> bool:
        return strategy not in self.limits.caps or n <= self.limits.caps[strategy][1]

    def _cheaper(self, job: Job, strategy: str | None, cost: float) -> str:
        """As advice in a refusal: the cheapest enabled strategy that can serve this request
        (its order, its per-sample parameters), if it differentiates; splitting the batch,
        if it has more than one sample."""
        split = ("split the batch" if job.n > 1 else
                 "one sample costs that much: ask for less of it (fewer wrt, order 1, fewer "
                 "steps) or from a server with a higher DYDC_MAX_JOB_COST")
        if strategy is None:  # plain evaluation: no strategy evaluates for less
            return split
        options = sorted(
            (self.estimate(job, name), name)
            for name in enabled(self.limits) if name != "auto" and self._within_cap(name, job.n)
            and refusal(name, job.routine, order=job.order, per_sample=job.per_sample) is None)
        for estimate, name in options:
            if estimate < cost and estimate <= self.limits.max_job_cost_s:
                return f"use strategy={name} (about {estimate:.3g} s), or {split}"
        return split

    def _cost(self, job: Job, strategy: str | None, cost: float | None = None,
              how: str = "") -> float:
        """``cost`` (default: the model's estimate), unless it is over DYDC_MAX_JOB_COST."""
        if cost is None:
            cost = self.estimate(job, strategy)
        if cost > self.limits.max_job_cost_s:
            metrics.REJECTIONS.labels("cost").inc()
            what = f"strategy {strategy}" if strategy else "evaluation"
            second = pairs(job)
            raise CostExceeded(
                f"{what} of {job.routine.called} at N = {job.n} with {passes(job)} "
                "parameter(s)"
                f"{f' and {second} second-order pair(s)' if second else ''} is "
                f"estimated at {cost:.3g} s of device time{how}, over the limit of "
                f"{self.limits.max_job_cost_s:g} s (DYDC_MAX_JOB_COST); "
                f"{self._cheaper(job, strategy, cost)}", cost, self.limits.max_job_cost_s)
        return cost

    def _compilable(self, routine: Routine, strategy: str | None, job: Job) -> Problem | None:
        """The job as a problem that a compiled graph serves (forward or auto, or plain
        evaluation: strategy None; at least DYDC_COMPILE_MIN_SAMPLES samples, a kind not
        refused), else None."""
        compiled = self._compiled
        if (compiled is None or not runs_through_graphs(strategy) or job.check is not None
                or job.n < compiled.min_samples or not routine.compile):
            return None
        problem = with_features_as_params(Problem(
            routine, job.inputs, {k: torch.as_tensor(v, dtype=job.dtype)
                                  for k, v in job.params.items()}, job.wrt))
        if compiled.refused(problem, job.order, job.cross, self.devices[0]) is not None:
            return None
        return problem

    def _admit(self, routine: Routine, strategy: str | None, job: Job) -> float:
        """The job's price, held to DYDC_MAX_JOB_COST: what its launch takes through the
        compiled graph of its kind where one is loaded (its first launch at the price of plain
        evaluation, which a fused graph does not exceed by much: bench_strategies), else at
        eager speed. A forward-mode job over the limit eagerly whose kind a graph would serve
        starts that graph's build and is told when to retry (503), rather than refused for
        good; where an earlier build of it is in the cache directory (a restart), that is
        taken in at once and the job priced through it. Plain evaluation (``strategy`` None) is
        priced the same way through its values graph, but refused (422) over the limit while
        that graph has not launched."""
        problem = self._compilable(routine, strategy, job)
        if problem is None:
            return self._cost(job, strategy)
        compiled = self._compiled
        assert compiled is not None
        device = self.devices[0]
        seconds = compiled.launch_seconds(problem, device, job.order, job.cross)
        if seconds is None:
            eager = self.estimate(job, strategy)
            if eager <= self.limits.max_job_cost_s:
                return eager  # (its launch asks for the graph, as every large launch does)
            if strategy is None:  # plain evaluation's graph is priced at eager evaluation's
                # estimate until it has launched: waiting for it would not make this affordable
                return self._cost(job, strategy, eager)
            compiled.request(problem, job.order, job.cross, device)
            if compiled.refused(problem, job.order, job.cross, device) is not None:
                return self._cost(job, strategy, eager)  # (DYDC_COMPILE_MAX_GRAPHS)
            # an earlier build in the cache directory is taken in at once: priced through it
            seconds = compiled.launch_seconds(problem, device, job.order, job.cross)
            if seconds is None:
                plain = self.costs.estimate(routine, None, job.n, 1)
                retry_s = compiled.typical_build_s()
                metrics.REJECTIONS.labels("cost").inc()
                raise GraphBuilding(
                    f"strategy {strategy} of {routine.called} at N = {job.n} is estimated at "
                    f"{eager:.3g} s of device time in eager forward mode, over the limit of "
                    f"{self.limits.max_job_cost_s:g} s (DYDC_MAX_JOB_COST); a compiled graph "
                    f"for it is being built (about {retry_s:.0f} s): retry then, when it is "
                    f"priced at the graph's speed (plain evaluation takes about {plain:.3g} "
                    "s), or split the batch", retry_after_s=retry_s)
        measured = seconds > 0
        cost = seconds if measured else self.costs.estimate(routine, None, job.n, 1)
        how = " through its compiled graph" + ("" if measured else " (plain evaluation's time)")
        return self._cost(job, strategy, cost, how)

    def unaffordable(self, job: Job, strategy: str) -> str | None:
        """Why this server would not run ``job`` under ``strategy`` (turned off, or over
        the cost limit), or None."""
        if strategy not in self.limits.enabled:
            return f"strategy {strategy} is turned off on this server (DYDC_STRATEGIES)"
        cost = self.estimate(job, strategy)
        if cost > self.limits.max_job_cost_s:
            return (f"estimated at {cost:.3g} s of device time, over the limit of "
                    f"{self.limits.max_job_cost_s:g} s (DYDC_MAX_JOB_COST)")
        return None
