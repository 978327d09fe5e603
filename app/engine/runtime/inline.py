"""Small launches on the event loop's own thread, where handing them over costs more than
running them.

A 16-sample launch of a compiled graph takes about 60 us; handing its requests to the device
worker's thread and their answers back cost the event loop's thread more than that per
request: the queue's condition wakes the worker, the two threads trade the interpreter lock
(each release a futex call and a wait to get it back), and the answers come back through the
loop's self-pipe. Measured at c=64 with an in-process driver (docs/benchmarks.md), the loop's
thread spent 185 us of CPU a request with the worker and 101 us with the answer made on the
loop itself.

So on a CPU device, a light job (batchable, not heavy) whose price is under
DYDC_INLINE_LAUNCH_MS runs on the loop, in the loop's next turn after it was submitted,
batched with the other such jobs submitted in between (the requests that arrived together),
when the device worker is idle: :meth:`InlineLane.offer` keeps it, and :meth:`_drain` runs the
launches (``DeviceWorker.execute``) while the worker's launch lock is free, at most
DYDC_INLINE_LAUNCH_MS of them a turn. What it does not run (the worker busy, the turn's
budget spent) goes to the queue as before, so one client's flood of small requests still
waits its turn behind no more than a turn's budget, and the loop answers health probes
between turns. A GPU's launches are asynchronous and their answers a synchronizing copy, so
there the worker keeps them all.

Hand-written: asyncio and the serving frameworks hand work to a thread or a process
(``run_in_executor``, Ray Serve's replicas, Triton's instances); none batches small calls on
the loop itself.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

from app import metrics
from app.engine.errors import DeadlineExceeded, ServiceUnavailable
from app.engine.runtime.admission import CostModel
from app.engine.runtime.batching import JobQueue
from app.engine.runtime.executor import batch_key
from app.engine.runtime.jobs import Job

log = logging.getLogger(__name__)

__all__ = ["INLINE_SAMPLES", "InlineLane"]

# The most samples in one launch on the loop: below it, a compiled CPU graph runs serially
# (app.engine.compiled.threads.GRAIN), so the loop's thread never opens an OpenMP team.
INLINE_SAMPLES = 32_768


class Launcher(Protocol):
    """What the lane needs of a device worker (app.engine.runtime.worker.DeviceWorker)."""

    launching: threading.Lock  # held while the worker launches

    @property
    def ready(self) -> bool: ...

    def execute(self, batch: list[Job]) -> None: ...


class InlineLane:
    """Light, cheap jobs run on the event loop when ``worker`` (a CPU device's) is idle,
    up to ``budget_s`` of launches a loop turn; the rest go to ``queue``."""

    def __init__(self, worker: Launcher, queue: JobQueue, costs: CostModel,
                 budget_s: float) -> None:
        self._worker = worker
        self._queue = queue
        self._costs = costs
        self._budget_s = budget_s
        self._pending: list[Job] = []
        self._scheduled = False

    def offer(self, job: Job) -> bool:
        """Keep ``job`` to run on the loop (True), or leave it to the queue (False).
        Called on the event loop that awaits the job."""
        if (job.cost_s > self._budget_s or job.n > INLINE_SAMPLES or self._queue.closed
                or not self._worker.ready or self._queue.heavy(job)
                or not self._costs.measured(job.routine)):
            return False
        self._pending.append(job)
        if not self._scheduled:
            self._scheduled = True
            job.future.get_loop().call_soon(self._drain)
        return True

    def withdraw(self, job: Job) -> bool:
        """Take back a job not run yet (its client went, or its deadline passed)."""
        try:
            self._pending.remove(job)
        except ValueError:
            return False
        return True

    def _batch(self, pending: list[Job]) -> tuple[list[Job], list[Job]]:
        """The first job still waiting and the compatible ones behind it (up to a launch of
        :data:`INLINE_SAMPLES`); and the rest."""
        first = pending[0]
        key = batch_key(first)
        batch: list[Job] = []
        rest: list[Job] = []
        samples = 0
        for job in pending:
            if samples + job.n <= INLINE_SAMPLES and (job is first or batch_key(job) == key):
                batch.append(job)
                samples += job.n
            else:
                rest.append(job)
        return batch, rest

    def _live(self) -> list[Job]:
        """The pending jobs still worth running; one past its deadline is answered 504."""
        pending, self._pending = self._pending, []
        now = time.perf_counter()
        live = []
        for job in pending:
            reason = job.stop_reason(now)
            if reason == "deadline":
                metrics.REJECTIONS.labels("deadline").inc()
                job.future.set_exception(DeadlineExceeded(now - job.enqueued_at,
                                                          deadline_s=job.timeout_s))
            elif reason is None:
                live.append(job)
        return live

    def _drain(self) -> None:
        """The loop's turn after jobs were offered: launch them here if the worker is
        idle, within the turn's budget; queue the rest for the worker."""
        self._scheduled = False
        live = self._live()
        if not live or not self._worker.launching.acquire(blocking=False):
            self._hand_over(live)
            return
        try:
            began = time.perf_counter()
            while live and time.perf_counter() - began < self._budget_s and self._worker.ready:
                batch, live = self._batch(live)
                try:
                    self._worker.execute(batch)
                except Exception as exc:  # before its launch (a graph's loading): its answer
                    log.exception("a launch on the event loop failed")
                    for job in batch:
                        if not job.future.done():
                            job.future.set_exception(ServiceUnavailable(
                                f"the launch failed ({type(exc).__name__}); retry"))
        finally:  # (what escapes it, a BaseException, goes on to the loop: nothing is lost)
            self._worker.launching.release()
            self._hand_over(live)

    def _hand_over(self, jobs: list[Job]) -> None:
        """To the worker's queue: it was busy, or the turn's budget is spent."""
        for job in jobs:
            try:
                self._queue.put(job)
            except Exception as exc:  # full, or shutting down: its answer
                job.future.set_exception(exc)
