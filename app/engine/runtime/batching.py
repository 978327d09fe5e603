"""The queue that the device workers share, and its batching policy (as Ray Serve's
batching.py is to its replicas).

The queue has two lanes. *Light* jobs (a batchable strategy, at most a launch of samples)
coalesce with compatible ones (same routine, dtype, wrt and strategy: :func:`batch_key`) into
one launch, each keeping its own parameter values. *Heavy* jobs (the O(N^2) and other
unbatchable strategies, requests larger than a launch, and second derivatives or reverse mode
of more samples than one launch may hold in memory) run alone, in slices
(app.engine.runtime.worker). The queue is bounded in samples, and in the heavy lane by the work
queued ahead of a job against its deadline.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque

from app import metrics
from app.engine.errors import CostExceeded, QueueFull, ServiceUnavailable
from app.engine.runtime.executor import batch_key, memory_chunk
from app.engine.runtime.jobs import Job, resolve_all

__all__ = ["JobQueue"]


def _seconds(s: float) -> str:
    """Seconds in a refusal: two decimals, and two significant digits below 0.1 s (a 5 ms
    deadline was "0.00 s")."""
    return f"{s:.2f}" if s >= 0.1 or s == 0 else f"{s:.2g}"


class JobQueue:
    """A FIFO in two lanes (light and heavy, see the module docstring), bounded in samples,
    and in the heavy lane by the work queued ahead of a job against its deadline."""

    def __init__(self, max_samples: int, max_batch_samples: int, max_delay_s: float,
                 heavy_cost_s: float = math.inf):
        self.max_samples = max_samples
        self.max_batch_samples = max_batch_samples
        self.max_delay_s = max_delay_s
        self.heavy_cost_s = heavy_cost_s
        self._light: deque[Job] = deque()
        self._heavy: deque[Job] = deque()
        self._samples = 0
        self._heavy_cost = 0.0  # estimated seconds of heavy jobs queued or running
        self._cond = threading.Condition()
        self._closed = False
        metrics.QUEUE_BOUND_SAMPLES.set(max_samples)

    @property
    def closed(self) -> bool:
        return self._closed

    def heavy(self, job: Job) -> bool:
        """Run alone and in slices: unbatchable, larger than a launch, larger than what one
        launch may hold in memory (second derivatives, reverse mode: executor.memory_chunk),
        or priced over ``heavy_cost_s`` (a launch of a slow routine that fits the sample
        bounds: 262,144 samples of logistic_rk4 ran 9 s in one launch, light requests
        waiting behind it), so that the worker can serve light work between slices and stop
        them at their deadline or when they overrun their price."""
        if batch_key(job) is None or job.n > self.max_batch_samples \
                or job.cost_s > self.heavy_cost_s:
            return True
        bound = memory_chunk(job)
        return bound is not None and job.n > bound

    def _changed(self) -> None:
        metrics.QUEUE_DEPTH.set(len(self._light) + len(self._heavy))
        metrics.QUEUE_SAMPLES.set(self._samples)
        metrics.QUEUE_HEAVY_SECONDS.set(self._heavy_cost)

    def _admit_heavy(self, job: Job) -> None:
        """Refuse a heavy job that the heavy work ahead of it leaves no time for."""
        ahead = self._heavy_cost
        left = math.inf if job.deadline is None else job.deadline - time.perf_counter()
        if ahead < 1e-6:  # nothing ahead but the running total's rounding, left by jobs gone
            self._heavy_cost = ahead = 0.0
        if job.cost_s > left:  # no wait would make it fit, even alone: not a retry
            metrics.REJECTIONS.labels("cost").inc()
            behind = f", behind {ahead:.2g} s of heavy jobs ahead of it" if ahead > 0 else ""
            raise CostExceeded(
                f"this job is estimated at {_seconds(job.cost_s)} s of device time, more than "
                f"its deadline leaves ({_seconds(max(left, 0))} s{behind}): raise timeout_ms "
                "(at most DYDC_REQUEST_TIMEOUT_MS), send fewer samples, or use a cheaper "
                "strategy")
        if ahead > 0 and ahead + job.cost_s > left:
            metrics.REJECTIONS.labels("queue_full").inc()
            raise QueueFull(
                f"heavy jobs ahead of this one need about {ahead:.2g} s of device time, and "
                f"this one about {_seconds(job.cost_s)} s: it would not finish within its "
                f"deadline ({_seconds(max(left, 0))} s left); retry after a short wait, or use "
                "a cheaper strategy", retry_after_s=max(1.0, ahead))

    def put(self, job: Job) -> None:
        with self._cond:
            if self._closed:
                metrics.REJECTIONS.labels("shutdown").inc()
                raise ServiceUnavailable("the service is shutting down; retry on another replica")
            queued = self._light or self._heavy
            if queued and self._samples + job.n > self.max_samples:
                metrics.REJECTIONS.labels("queue_full").inc()
                raise QueueFull(
                    f"the queue is full ({self._samples} samples waiting, bound "
                    f"{self.max_samples}, DYDC_MAX_QUEUE_SAMPLES); retry after a short wait"
                )
            if self.heavy(job):
                self._admit_heavy(job)
                self._heavy.append(job)
                self._heavy_cost += job.cost_s
            else:
                self._light.append(job)
            self._samples += job.n
            self._changed()
            self._cond.notify()

    def withdraw(self, job: Job) -> bool:
        """Take a job back if no worker has claimed it yet."""
        with self._cond:
            for lane in (self._light, self._heavy):
                try:
                    lane.remove(job)
                except ValueError:
                    continue
                self._samples -= job.n
                if lane is self._heavy:
                    self._heavy_cost -= job.cost_s
                self._changed()
                return True
            return False

    def done(self, job: Job) -> None:
        """A heavy job that a worker took has finished or stopped."""
        with self._cond:
            self._heavy_cost = max(0.0, self._heavy_cost - job.cost_s)
            self._changed()

    def close(self) -> None:
        """Accept no more work; workers drain what is queued, then stop."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def fail_all(self, error: Exception) -> None:
        with self._cond:
            left = [*self._light, *self._heavy]
            self._light, self._heavy, self._samples = deque(), deque(), 0
            self._heavy_cost -= sum(job.cost_s for job in left if self.heavy(job))
            self._changed()
        resolve_all([(job, error) for job in left])

    def _pop_live(self, lane: deque[Job]) -> Job | None:
        """The oldest job of the lane still worth running; drops cancelled and expired ones."""
        now = time.perf_counter()
        while lane:
            job = lane.popleft()
            self._samples -= job.n
            reason = job.stop_reason(now)
            if reason is None:
                return job
            if lane is self._heavy:
                self._heavy_cost -= job.cost_s
            if reason == "deadline":
                job.expire(now)
        return None

    def _gather(self, batch: list[Job], key: object, samples: int) -> int:
        keep: deque[Job] = deque()
        for job in self._light:
            if (not job.future.done() and samples + job.n <= self.max_batch_samples
                    and batch_key(job) == key):
                batch.append(job)
                samples += job.n
                self._samples -= job.n
            else:
                keep.append(job)
        self._light = keep
        return samples

    def _light_batch(self, first: Job, wait: bool) -> list[Job]:
        """``first`` and the compatible jobs queued behind it; with ``wait``, a partial batch
        waits for company until ``first`` has waited DYDC_MAX_DELAY_MS."""
        batch = [first]
        key = batch_key(first)
        samples = first.n
        while True:
            samples = self._gather(batch, key, samples)
            left = first.enqueued_at + self.max_delay_s - time.perf_counter()
            if (not wait or len(batch) == 1 or samples >= self.max_batch_samples
                    or left <= 0):
                return batch
            self._cond.wait(left)

    def take(self, block: bool = True) -> list[Job] | Job | None:
        """The next work: a light launch (a list of jobs) before a heavy job. Blocking, it
        waits for work and returns None once closed and drained; a lone light job goes at
        once, a full batch goes at once, and a partial batch waits for company until its
        first job has waited DYDC_MAX_DELAY_MS. Not blocking, it returns a light launch that
        is ready now, or None (never a heavy job)."""
        with self._cond:
            while True:
                first = self._pop_live(self._light)
                if first is not None:
                    batch = self._light_batch(first, wait=block)
                    self._changed()
                    return batch
                if not block:
                    self._changed()
                    return None
                heavy = self._pop_live(self._heavy)
                self._changed()
                if heavy is not None:
                    return heavy
                if self._closed:
                    return None
                self._cond.wait()
