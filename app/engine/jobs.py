"""The unit of work that crosses from the event loop to the device worker, and its answer."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from enum import Enum

import torch
from torch import Tensor

from routines import Routine

__all__ = ["Job", "JobKind", "JobResult"]


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
    batch_requests: int = 1  # requests that shared the launch


@dataclass(eq=False)
class Job:
    """A validated request: everything the worker needs and nothing it must check again."""

    kind: JobKind
    routine: Routine
    inputs: Tensor  # (N, D), CPU, in the requested dtype
    params: dict[str, float]
    wrt: tuple[str, ...]
    strategy: str | None
    dtype: torch.dtype
    future: asyncio.Future[JobResult] = field(repr=False)
    deadline: float | None = None  # perf_counter time after which a queued job is dropped
    enqueued_at: float = field(default_factory=time.perf_counter)

    @property
    def n(self) -> int:
        return int(self.inputs.shape[0])

    def resolve(self, result: JobResult | BaseException) -> None:
        """Hand the answer to the awaiting request, from any thread."""
        loop = self.future.get_loop()
        if loop.is_closed():
            return
        loop.call_soon_threadsafe(_settle, self.future, result)


def _settle(future: asyncio.Future[JobResult], result: JobResult | BaseException) -> None:
    if future.done():  # the client went away and the request was cancelled
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
