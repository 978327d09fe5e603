"""Small launches on the event loop's own thread, where handing them over costs more than
running them.

A 16-sample launch of a compiled graph takes about 60 us; handing its requests to the device
worker's thread and their answers back cost the event loop's thread more than that per
request: the queue's condition wakes the worker, the two threads trade the interpreter lock
(each release a futex call and a wait to get it back), and the answers come back through the
loop's self-pipe. Measured at c=64 with an in-process driver (docs/benchmarks.md), the loop's
thread spent 185 us of CPU a request with the worker and 101 us with the answer made on the
loop itself.

So on a CPU device, a light job (batchable, not heavy) of a kind (routine, dtype, wrt,
strategy, order) that has launched before, priced under DYDC_INLINE_LAUNCH_MS and taking less
than that at the rate of its kind's last launch, runs on the loop, in the loop's next turn
after it was submitted, batched with the other such jobs submitted in between
(the requests that arrived together), when the device worker is idle: :meth:`InlineLane.offer`
keeps it, and :meth:`InlineLane._drain` runs the launches (``DeviceWorker.execute``) while the
worker's launch lock is free. A kind's first launch runs on the worker, and every launch,
wherever it runs, records its time (``DeviceWorker.launch_s``): a first launch pays
torch.func's one-off set-up (hundreds of ms for a caller's expression), and what launches of
the kind took corrects the price (second derivatives took up to 17x theirs). A launch on the
loop holds at most as many samples as that time allows within the budget, and the turn ends
once the budget is spent; what is left, and all of it while the worker is busy, goes to the
queue as before. So a flood of small requests still lets the loop answer health probes
between turns. A GPU's launches are asynchronous and their answers a synchronizing copy, so
there the worker keeps them all.

Shutting down, nothing the lane took is refused: with the queue closed its jobs run on the loop
(whatever the budget) as soon as the worker's lock is free, and :meth:`InlineLane.fail_all`
answers what is left at the end of the grace period, as the queue's jobs are.

Hand-written: asyncio and the serving frameworks hand work to a thread or a process
(``run_in_executor``, Ray Serve's replicas, Triton's instances); none batches small calls on
the loop itself.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Protocol

from app.engine.compiled.threads import GRAIN
from app.engine.errors import QueueFull, ServiceUnavailable
from app.engine.runtime.batching import JobQueue
from app.engine.runtime.executor import batch_key
from app.engine.runtime.jobs import Job, resolve_all

__all__ = ["INLINE_SAMPLES", "InlineLane", "Launcher"]

log = logging.getLogger(__name__)

# The most samples in one launch on the loop: below GRAIN, a compiled CPU graph runs serially
# (app.engine.compiled.threads), so the loop's thread never opens an OpenMP team.
INLINE_SAMPLES = GRAIN - 1
# While shutting down with the worker busy, the lane looks again this often (seconds).
_RETRY_S = 0.005


class Launcher(Protocol):
    """What the lane needs of a device worker (app.engine.runtime.worker.DeviceWorker)."""

    launching: threading.Lock  # held while the worker launches

    @property
    def launch_s(self) -> Mapping[tuple[object, ...], tuple[float, int]]:
        """Each kind's (batch_key's) last launch: (seconds, samples)."""

    @property
    def ready(self) -> bool: ...

    def execute(self, batch: list[Job]) -> None: ...


class InlineLane:
    """Light jobs of kinds that launch within ``budget_s`` run on the event loop while
    ``worker`` (a CPU device's) is idle, up to ``budget_s`` of launches a loop turn; the rest
    go to ``queue``."""

    def __init__(self, worker: Launcher, queue: JobQueue, budget_s: float) -> None:
        self._worker = worker
        self._queue = queue
        self._budget_s = budget_s
        self._most = min(INLINE_SAMPLES, queue.max_batch_samples)
        self._pending: list[Job] = []
        self._scheduled = False

    def offer(self, job: Job) -> bool:
        """Keep ``job`` to run on the loop (True), or leave it to the queue (False).
        Called on the event loop that awaits the job."""
        if (job.n > self._most or self._queue.closed or not self._worker.ready
                or self._queue.heavy(job)):
            return False
        last = self._last(batch_key(job))
        if last is None or job.cost_s > self._budget_s \
                or last[0] * job.n / max(last[1], 1) > self._budget_s:
            return False  # its kind's first launch, or too long for the loop
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

    def fail_all(self, error: Exception) -> None:
        """Answer every job not run yet with ``error`` (from any thread: the end of a
        shutdown's grace period)."""
        left, self._pending = self._pending, []
        resolve_all([(job, error) for job in left])

    def _last(self, key: tuple[object, ...] | None) -> tuple[float, int] | None:
        """The kind's last launch (seconds, samples), or None (never launched)."""
        return self._worker.launch_s.get(key) if key is not None else None

    def _samples(self, key: tuple[object, ...] | None) -> int:
        """The most samples of a kind that one launch on the loop takes: as many as its last
        launch's rate fits in the budget (that launch's own size at least), within a serial
        launch and DYDC_MAX_BATCH_SAMPLES."""
        last = self._last(key)
        if last is None or last[0] <= 0:
            return self._most
        seconds, samples = last
        return min(self._most, max(samples, int(samples * self._budget_s / seconds)))

    def _batch(self, pending: list[Job]) -> tuple[list[Job], list[Job]]:
        """The first job still waiting, whatever its kind's rate now (it was taken at the
        rate of its offer, and within the serial grain), and the compatible ones behind it up
        to :meth:`_samples`; and the rest. (A scenarios request offers two jobs of one kind:
        the base's small launch could lower the rate under the other's size, and the empty
        batch failed its launch.)"""
        first = pending[0]
        key = batch_key(first)
        most = self._samples(key)
        batch: list[Job] = []
        rest: list[Job] = []
        samples = 0
        for job in pending:
            if job is first or (samples + job.n <= most and batch_key(job) == key):
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
                job.expire(now)
            elif reason is None:
                live.append(job)
        return live

    def _drain(self) -> None:
        """The loop's turn after jobs were offered: launch them here if the worker is
        idle, within the turn's budget (all of them when shutting down); queue the rest
        for the worker."""
        self._scheduled = False
        live = self._live()
        if not live:
            return
        if not self._worker.launching.acquire(blocking=False):
            self._hand_over(live)
            return
        try:
            began = time.perf_counter()
            closing = self._queue.closed  # (then all of them: the queue takes none)
            while live and (closing or time.perf_counter() - began < self._budget_s):
                batch, live = self._batch(live)
                self._launch(batch)
        finally:  # (what escapes a launch, a BaseException, goes on to the loop; the jobs
            # behind it are not lost)
            self._worker.launching.release()
            self._hand_over(live)

    def _launch(self, batch: list[Job]) -> None:
        try:
            self._worker.execute(batch)
        except Exception as exc:  # before its launch (a graph's loading): its answer
            log.exception("a launch on the event loop failed")
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(ServiceUnavailable(
                        f"the launch failed ({type(exc).__name__}); retry"))

    def _later(self, jobs: list[Job]) -> None:
        self._pending[:0] = jobs
        if not self._scheduled:
            self._scheduled = True
            jobs[0].future.get_loop().call_later(_RETRY_S, self._drain)

    def _hand_over(self, jobs: list[Job]) -> None:
        """To the worker's queue: it was busy, or the turn's budget is spent. Once the queue
        is closed (shutting down), the lane keeps them: they were taken before."""
        for i, job in enumerate(jobs):
            try:
                self._queue.put(job)
            except QueueFull as exc:  # its answer
                job.future.set_exception(exc)
            except ServiceUnavailable:  # closed: again once the worker is done
                self._later(jobs[i:])
                return
