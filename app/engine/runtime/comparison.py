"""Every strategy on one request, side by side: "which way of differentiating is right and
fastest for my routine?" in one call.

Each strategy that applies runs as its own job through the same queue and worker as any
request (so its time is the launch's compute time, comparable across rows); one that cannot
serve the request (no second order, shared parameters only, over its cap) is skipped with the
reason and never run past its limit. ``forward`` is the reference; when it fails (a routine
with an operation lacking a forward formula), the first strategy that succeeded is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from torch import Tensor

from app.engine.differentiation.bumping import Bump
from app.engine.differentiation.capabilities import cap_refusal, refusal
from app.engine.differentiation.checking import differences
from app.engine.differentiation.strategies import STRATEGIES
from app.engine.errors import EngineError, RoutineFailed
from app.engine.runtime.jobs import Job, JobResult
from app.engine.runtime.validation import Limits

__all__ = ["REFERENCE", "Comparison", "Row", "Runner", "compare"]

REFERENCE = "forward"


class Runner(Protocol):
    """What :func:`compare` needs of the engine (app.engine.runtime.service.Engine is one)."""

    limits: Limits

    async def run(self, job: Job) -> JobResult: ...

    def again(self, job: Job, strategy: str, bump: Bump | None = None) -> Job: ...

    def unaffordable(self, job: Job, strategy: str) -> str | None: ...


@dataclass(frozen=True)
class Row:
    strategy: str
    status: str  # ok, skipped or failed
    reason: str | None = None
    time_ms: float | None = None
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    max_rel_diff: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Comparison:
    reference: str
    rows: list[Row]
    result: JobResult  # the reference's answer


def _all(result: JobResult) -> dict[str, Tensor]:
    return {**result.derivatives, **result.second_derivatives}


def _why_not(engine: Runner, job: Job, strategy: str) -> str | None:
    return (refusal(strategy, job.routine, order=job.order, per_sample=job.per_sample)
            or cap_refusal(strategy, job.n, engine.limits.caps)
            or engine.unaffordable(job, strategy))


async def compare(engine: Runner, job: Job) -> Comparison:
    """Run every strategy but ``auto`` (which is forward, or its fallback) on ``job``, a
    prepared finite-difference request, one after the other."""
    answers: dict[str, JobResult] = {}
    failed: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for name in STRATEGIES:
        if name == "auto":
            continue
        reason = _why_not(engine, job, name)
        if reason is not None:
            skipped[name] = reason
            continue
        bump = job.bump if name == "finite-difference" else None
        try:
            answers[name] = await engine.run(engine.again(job, name, bump))
        except EngineError as exc:
            failed[name] = exc.message
    if not answers:  # nothing to compare: the request itself is what must change
        reasons = "; ".join(f"{name}: {why}" for name, why in {**skipped, **failed}.items())
        raise RoutineFailed(f"no strategy could answer this request ({reasons})")
    reference = REFERENCE if REFERENCE in answers else next(iter(answers))
    ref = answers[reference]
    rows: list[Row] = []
    for name in STRATEGIES:
        if name in answers:
            abs_diff, rel_diff = differences(_all(answers[name]), _all(ref))
            rows.append(Row(name, "ok", None, round(answers[name].compute_s * 1e3, 3),
                            abs_diff, rel_diff))
        elif name in skipped:
            rows.append(Row(name, "skipped", skipped[name]))
        elif name in failed:
            rows.append(Row(name, "failed", failed[name]))
    return Comparison(reference, rows, ref)
