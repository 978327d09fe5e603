"""Running one job on a device: the strategy, the auto fallback and the output checks."""

from __future__ import annotations

import time

import torch
from torch import Tensor

from app.engine.errors import EngineError, InvalidRequest, RoutineFailed
from app.engine.jobs import Job, JobKind, JobResult
from app.engine.strategies import STRATEGIES, Derivatives, Problem, lacks_forward_formula

__all__ = ["AUTO_FALLBACK", "differentiate", "run_job"]


AUTO_FALLBACK = "vmap-grad"  # O(N) reverse mode, no cap, for routines lacking forward formulas


def _problem(job: Job, device: torch.device) -> Problem:
    return Problem(
        routine=job.routine,
        inputs=job.inputs.to(device, non_blocking=True),
        params={k: torch.tensor(v, dtype=job.dtype, device=device) for k, v in job.params.items()},
        wrt=job.wrt,
    )


def differentiate(problem: Problem, strategy: str) -> tuple[Derivatives, str]:
    if strategy != "auto":
        return STRATEGIES[strategy].run(problem), strategy
    try:
        return STRATEGIES["forward"].run(problem), "forward"
    except NotImplementedError as exc:
        if not lacks_forward_formula(exc):
            raise
    return STRATEGIES[AUTO_FALLBACK].run(problem), AUTO_FALLBACK


def _first_non_finite(t: Tensor) -> int | None:
    bad = ~torch.isfinite(t)
    if not bool(bad.any()):
        return None
    return int(bad.reshape(t.shape[0], -1).any(dim=1).nonzero()[0, 0])


def _check_finite(job: Job, name: str, t: Tensor) -> None:
    i = _first_non_finite(t)
    if i is not None:
        sample = dict(zip(job.routine.inputs, job.inputs[i].tolist(), strict=True))
        raise RoutineFailed(
            f"routine {job.routine.name} gave a non-finite {name} for sample {i} "
            f"(inputs {sample}, params {job.params}); check that the inputs and parameters "
            "are inside the routine's domain"
        )


def run_job(job: Job, device: torch.device) -> JobResult:
    """Compute one job. Engine errors pass through; anything the routine raises is wrapped."""
    started = time.perf_counter()
    try:
        problem = _problem(job, device)
        if job.kind is JobKind.EVALUATE:
            values, derivs, ran = problem.evaluate(), {}, None
        else:
            assert job.strategy is not None
            result, ran = differentiate(problem, job.strategy)
            values, derivs = result.values, result.derivatives
    except EngineError:
        raise
    except NotImplementedError as exc:
        hint = "; use strategy=auto or a reverse strategy" if lacks_forward_formula(exc) else ""
        raise InvalidRequest(f"strategy {job.strategy} cannot differentiate routine "
                             f"{job.routine.name}: {exc}".split("\n")[0] + hint) from exc
    except Exception as exc:
        raise RoutineFailed(
            f"routine {job.routine.name} failed under strategy {job.strategy or 'evaluate'}: "
            f"{type(exc).__name__}: {exc}".split("\n")[0]
        ) from exc
    out = {name: d.detach().to("cpu", job.dtype) for name, d in derivs.items()}
    values = values.detach().to("cpu", job.dtype)
    _check_finite(job, "value", values)
    for name, d in out.items():
        _check_finite(job, f"dy/d{name}", d)
    finished = time.perf_counter()
    return JobResult(
        values=values,
        derivatives=out,
        strategy=ran,
        device=str(device),
        queue_s=started - job.enqueued_at,
        compute_s=finished - started,
    )
