"""The unit of work that crosses from the event loop to the device worker, and its answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
import torch
from torch import Tensor

from app import metrics
from app.engine.differentiation.bumping import Bump
from app.engine.differentiation.checking import Check
from app.engine.differentiation.input_sensitivities import features_in
from app.engine.errors import DeadlineExceeded
from routines import Routine

__all__ = ["Job", "JobKind", "JobResult", "resolve_all"]


class JobKind(Enum):
    EVALUATE = "evaluate"
    SENSITIVITIES = "sensitivities"


@dataclass(frozen=True)
class JobResult:
    values: Tensor  # (N, M), on the CPU
    derivatives: dict[str, Tensor]  # each (N, M), on the CPU
    strategy: str | None  # the strategy that ran (None for evaluate)
    device: str
    queue_s: float
    compute_s: float  # of the launch (shared by the requests batched into it)
    second_derivatives: dict[str, Tensor] = field(default_factory=dict)  # "a,b" -> (N, M)
    check: Check | None = None  # AD against bumping, when the request asked for it
    graph: bool = False  # a compiled graph ran (some of) it


@dataclass(eq=False)
class Job:
    """A validated request: everything the worker needs and nothing it must check again."""

    kind: JobKind
    routine: Routine
    inputs: Tensor  # (N, D), CPU, in the requested dtype
    params: dict[str, float | np.ndarray]  # a number, or one float64 value per sample (N,)
    wrt: tuple[str, ...]  # parameters and/or input features
    strategy: str | None
    dtype: torch.dtype
    order: int = 1  # 2 adds second derivatives
    cross: bool = False  # order 2: every unordered pair of wrt, not only the diagonal
    bump: Bump | None = None  # finite-difference settings (strategy or check)
    check: str | None = None  # "finite-difference": compare the answer with bumping
    deadline: float | None = None  # perf_counter time after which it is dropped or stopped
    enqueued_at: float = field(default_factory=time.perf_counter)
    cost_s: float = 0.0  # estimated device seconds (app.engine.runtime.admission)
    n: int = field(init=False)  # samples: read on every hop, so kept as a plain int
    # its answer, on the event loop that awaits it: set when it is queued (Engine.run)
    future: asyncio.Future[JobResult] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.n = int(self.inputs.shape[0])

    @property
    def per_sample(self) -> bool:
        """Whether a value varies by sample: a parameter given one value per sample, or an
        input feature in wrt (differentiated as a per-sample parameter)."""
        return bool(features_in(self.routine, self.wrt)) or any(
            isinstance(v, np.ndarray) for v in self.params.values())

    @property
    def timeout_s(self) -> float | None:
        """The seconds from its making to its deadline."""
        return None if self.deadline is None else self.deadline - self.enqueued_at

    def stop_reason(self, now: float) -> str | None:
        """Why this job must not run on, read from the worker's thread: ``disconnect`` (its
        request was cancelled), ``answered`` (it already has an answer, such as a shutdown's
        503), ``deadline``; None to go on."""
        if self.future.cancelled():
            return "disconnect"
        if self.future.done():
            return "answered"
        if self.deadline is not None and now > self.deadline:
            return "deadline"
        return None

    def expire(self, now: float) -> None:
        """Its deadline passed before it ran (queued, or waiting for the event loop's turn):
        answer DeadlineExceeded, counted in dydc_rejections_total, from any thread."""
        metrics.REJECTIONS.labels("deadline").inc()
        self.resolve(DeadlineExceeded(now - self.enqueued_at, deadline_s=self.timeout_s))

    def resolve(self, result: JobResult | BaseException) -> None:
        """Hand the answer to the awaiting request, from any thread."""
        resolve_all([(self, result)])


def resolve_all(answers: Sequence[tuple[Job, JobResult | BaseException]]) -> None:
    """Hand answers to their requests, from any thread: one wake-up of each event loop for
    the lot, not one per request."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Job, JobResult | BaseException]]] = {}
    for job, result in answers:
        by_loop.setdefault(job.future.get_loop(), []).append((job, result))
    for loop, settled in by_loop.items():
        if asyncio._get_running_loop() is loop:  # answered on the loop itself (inline.py)
            _settle(settled)
        elif not loop.is_closed():
            loop.call_soon_threadsafe(_settle, settled)


def _settle(answers: list[tuple[Job, JobResult | BaseException]]) -> None:
    for job, result in answers:
        if job.future.done():  # the client went away and the request was cancelled
            continue
        if isinstance(result, BaseException):
            job.future.set_exception(result)
        else:
            job.future.set_result(result)
