"""Pricing a job before it is queued, and holding it to that price while it runs.

A job's cost is an estimate of the device time it needs, in seconds:

    cost = passes x (the routine's fixed time per pass) + samples x (its time per sample)

where ``passes`` and ``samples`` come from the strategy's complexity in N, M and the number
of parameters (``Strategy.work``), and the routine's two times are measured on the device at
warm-up (or at its first launch, when warm-up is off). Both are rough: what a job actually
took corrects later estimates for that routine and strategy, and a sliced job whose first
slices show that it will cost well over the limit is stopped there (app.engine.runtime.worker).

Hand-written: serving frameworks bound requests by count or size (Triton's queue policy,
Ray Serve's max_ongoing_requests), none by the work a request implies, which differs here by
five orders of magnitude between strategies for the same N.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

import torch

from app.engine.differentiation.evaluation import evaluate_batch
from app.engine.differentiation.strategies import STRATEGIES, Work
from routines import Routine

__all__ = ["CostModel", "RoutineCost"]

# How far a running job's projected cost may exceed the limit before it is stopped: the
# estimate let it in, so only a clear overrun stops it.
OVERRUN = 1.5
_MEASURE_N = (256, 8192)
_REPEATS = 5


@dataclass(frozen=True)
class RoutineCost:
    pass_s: float  # fixed time of one pass over the routine, whatever N
    sample_s: float  # time per sample of one pass


# Before a routine is measured: generous, so that an unmeasured routine is not refused for a
# guess; a job that turns out heavy is stopped on its first slices.
_PRIOR = RoutineCost(pass_s=1e-4, sample_s=1e-7)
# A routine that states its operations (a caller's expression) is priced by them and never
# timed on the device first: timing runs the routine ten times before any price holds, and a
# caller's 10,000-step ODE of a 1,000-node right-hand side would hold the device for minutes.
# A pass costs a call's fixed part and each operation's dispatch through the interpreter,
# and each sample each operation's elements: measured here (CostModel.measure of the
# 200-step logistic ODE, 10,401 operations: 2.7 us and 0.23 ns an operation; of a 15-node
# expression: 150 us a call), and taken about twice over. The constants they replace (10 us
# and 4 ns an operation) priced the ODE 12x over logistic_rk4, the same computation, and
# refused at N = 30,000 what the routine serves in 0.8 s.
_CALL_S = 1e-4
_OPERATION = RoutineCost(pass_s=4e-6, sample_s=5e-10)
# What one second-order pair (d2y/da db) costs, in first-order units of the strategy's mode:
# nested forward mode (a jvp of a jvp) through a routine of many small steps about ten
# first-order passes (measured: logistic_rk4 9.4, a 200-step ODE expression 11); reverse over
# reverse (vmap-grad's Hessian) half a whole first-order job per pair (logistic_rk4 at 2,000
# samples: 4 wrt, 10 pairs, 5.8x the first order); bumping 4 evaluations a pair, about 1.3 of
# its 3-evaluation unit. Priced as passes, these had order 2 at a tenth to a thirtieth of what
# it took, so one request held the device for minutes past its deadline.
PAIR_WEIGHT = {"forward": 10.0, "reverse": 0.5, "numeric": 1.3}


def _time(routine: Routine, n: int, device: torch.device) -> float:
    x = torch.ones(n, len(routine.inputs), dtype=torch.float64, device=device)
    params = {p.name: torch.tensor(p.default, dtype=torch.float64, device=device)
              for p in routine.params}
    times = []
    for _ in range(_REPEATS):
        began = time.perf_counter()
        evaluate_batch(routine, x, params)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - began)
    # the fastest: on a busy host every other run measures the neighbours too. An estimate
    # too low costs a job's first two slices before it is stopped (and corrects the model);
    # one too high refuses honest work.
    return min(times)


class CostModel:
    """Estimates per job, corrected by what jobs took. Thread-safe."""

    def __init__(self, max_job_cost_s: float) -> None:
        self.max_job_cost_s = max_job_cost_s
        self._routines: dict[str, RoutineCost] = {}
        self._correction: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def measured(self, routine: Routine) -> bool:
        """Whether the routine needs no timing: timed already, or priced by its operations."""
        return routine.operations is not None or routine.name in self._routines

    def measure(self, routine: Routine, device: torch.device) -> RoutineCost:
        """Time plain evaluation at two sizes on ``device``: the fixed and per-sample parts.
        The caller holds the transforms lock (vmap), as for any launch."""
        small, large = _MEASURE_N
        t_small, t_large = _time(routine, small, device), _time(routine, large, device)
        # the slope between the sizes, within what the two times allow (a noisy host can
        # make the larger call look no slower, or the smaller one slower than it is)
        sample_s = min(max((t_large - t_small) / (large - small), t_large / large / 10),
                       t_large / large)
        cost = RoutineCost(pass_s=max(t_large - large * sample_s, 1e-6), sample_s=sample_s)
        with self._lock:
            self._routines[routine.name] = cost
        return cost

    def _raw(self, routine: Routine, strategy: str | None, n: int, p: int,
             pairs: int = 0) -> float:
        if routine.operations is not None:
            ops = routine.operations
            cost = RoutineCost(_CALL_S + ops * _OPERATION.pass_s, ops * _OPERATION.sample_s)
        else:
            cost = self._routines.get(routine.name, _PRIOR)
        m = len(routine.outputs)

        def seconds(params: int) -> float:
            work = STRATEGIES[strategy].work(n, m, params) if strategy else Work(1, n)
            return work.passes * cost.pass_s + work.samples * cost.sample_s

        first = seconds(max(p, 1))
        if not pairs or strategy is None:
            return first
        return first + pairs * PAIR_WEIGHT[STRATEGIES[strategy].mode] * seconds(1)

    def estimate(self, routine: Routine, strategy: str | None, n: int, p: int,
                 pairs: int = 0) -> float:
        """Estimated seconds on the device for one request: ``strategy`` None is evaluate;
        ``p`` first-order derivatives and ``pairs`` second-order ones."""
        correction = self._correction.get((routine.name, strategy or "evaluate"), 1.0)
        return self._raw(routine, strategy, n, p, pairs) * correction

    def learn(self, routine: Routine, strategy: str | None, n: int, p: int,
              seconds: float, pairs: int = 0) -> None:
        """A job of this kind took ``seconds`` (or is projected to): move later estimates
        halfway towards it, in log space, within a factor of 100 either way."""
        raw = self._raw(routine, strategy, n, p, pairs)
        if raw <= 0 or seconds <= 0 or routine.operations is not None:
            return  # (callers' expressions: one entry each would grow without bound)
        ratio = min(max(seconds / raw, 1e-2), 1e2)
        key = (routine.name, strategy or "evaluate")
        with self._lock:
            old = self._correction.get(key, 1.0)
            self._correction[key] = math.sqrt(old * ratio)

    def overrun(self, projected_s: float) -> bool:
        """Whether a running job projected to take ``projected_s`` must be stopped."""
        return projected_s > self.max_job_cost_s * OVERRUN
