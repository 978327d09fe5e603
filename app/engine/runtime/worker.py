"""The device workers.

Requests put a :class:`Job` on the :class:`~app.engine.runtime.batching.JobQueue` (its two
lanes and batching policy are described there) and await its future; only a small one on the
CPU, while its worker is idle, runs on the event loop instead (app.engine.runtime.inline).
One :class:`DeviceWorker` thread per device takes work from the queue;
an idle worker is the least loaded one, so work goes where there is room. Heavy jobs run
alone, in slices: between two slices the worker runs any light launch that is waiting, so
small requests never wait behind a heavy job for more than about a slice, and it checks
whether the heavy job should go on. A job whose client has
gone, whose deadline has passed, or whose first slices show that it costs well over
DYDC_MAX_JOB_COST, is stopped at the next slice boundary, and what it held is freed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from app import metrics
from app.engine.differentiation.capabilities import refusal
from app.engine.differentiation.differentiate import TRANSFORMS_LOCK
from app.engine.errors import (
    CostExceeded,
    DeadlineExceeded,
    EngineError,
    ServiceUnavailable,
)
from app.engine.runtime.admission import CostModel
from app.engine.runtime.batching import JobQueue
from app.engine.runtime.executor import Executor, Sliced, batch_key
from app.engine.runtime.inline import InlineLane
from app.engine.runtime.jobs import Job, JobResult, resolve_all
from app.engine.runtime.pricing import pairs, passes

__all__ = ["DeviceUnavailable", "DeviceWorker", "WorkerPool", "resolve_devices"]

log = logging.getLogger(__name__)


class DeviceUnavailable(RuntimeError):
    """DYDC_DEVICE names a device this host does not have."""


def _resolve_one(setting: str) -> list[torch.device]:
    if setting == "cpu":
        return [torch.device("cpu")]
    if setting in ("auto", "cuda"):
        if torch.cuda.is_available():
            return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
        if setting == "auto":
            return [torch.device("cpu")]
        raise DeviceUnavailable("DYDC_DEVICE=cuda but CUDA is not available here; "
                           "use DYDC_DEVICE=cpu or auto")
    device = torch.device(setting)
    if device.type != "cuda":
        raise DeviceUnavailable(f"DYDC_DEVICE={setting}: use auto, cpu, cuda, cuda:N or a list")
    if not torch.cuda.is_available():
        raise DeviceUnavailable(f"DYDC_DEVICE={setting} but CUDA is not available here; "
                           "use DYDC_DEVICE=cpu or auto")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceUnavailable(f"DYDC_DEVICE={setting} but only {torch.cuda.device_count()} "
                           "CUDA device(s) are visible")
    return [device]


def resolve_devices(setting: str) -> list[torch.device]:
    """DYDC_DEVICE -> devices: auto (every visible GPU, else the CPU), cpu, cuda (every
    visible GPU), cuda:N, or a comma-separated list such as cuda:0,cuda:2."""
    devices: list[torch.device] = []
    for part in setting.split(","):
        devices += _resolve_one(part.strip())
    return devices


@dataclass
class _Task:
    """A heavy job in progress."""

    job: Job
    steps: Sliced
    busy_s: float = 0.0  # time spent in its slices so far
    # the first slice (which also builds what the others share), for projections
    first: tuple[float, float] | None = None  # (seconds, fraction done)

    def projected_s(self, progress: float) -> float | None:
        """The whole job's time at the rate of its slices after the first; None until
        there is such a slice."""
        if self.first is None:
            self.first = (self.busy_s, progress)
            return None
        first_s, first_done = self.first
        if progress <= first_done:
            return None
        rate = (self.busy_s - first_s) / (progress - first_done)
        return first_s + rate * (1 - first_done)


# kinds whose last launch time a worker keeps (app.engine.runtime.inline), before it starts anew
_KINDS_TIMED = 4096


def _took(times: dict[tuple[object, ...], tuple[float, int]], batch: list[Job],
          seconds: float) -> None:
    """Record a light launch's time for its kind (what app.engine.runtime.inline decides
    by), in a bounded record (callers' expressions are kinds of their own)."""
    key = batch_key(batch[0])
    if key is not None:
        if len(times) >= _KINDS_TIMED:
            times.clear()
        times[key] = (seconds, sum(job.n for job in batch))


def _died(device: torch.device, exc: BaseException) -> ServiceUnavailable:
    """The answer for the requests of a launch that killed the worker's thread."""
    return ServiceUnavailable(f"the device worker on {device} failed "
                              f"({type(exc).__name__}); retry")


def _overran(job: Job, progress: float, projected_s: float, costs: CostModel) -> CostExceeded:
    """The answer for a job stopped mid-run for what it would cost: how many samples the
    limit allows at the rate it ran (by the cost model's shape in N: an O(N^2) strategy's
    cost falls as the square), and forward mode only where it is another strategy that could
    serve the request."""
    limit_s = costs.max_job_cost_s

    def at(n: int) -> float:  # the projected cost of the job at n samples
        return projected_s * costs.estimate(job.routine, job.strategy, n, passes(job),
                                            pairs(job)) / whole

    whole = costs.estimate(job.routine, job.strategy, job.n, passes(job), pairs(job))
    fit, over = 0, job.n  # at(fit) within the limit (or fit 0), at(over) over it
    while whole > 0 and over - fit > 1:
        middle = (fit + over) // 2
        fit, over = (middle, over) if at(middle) <= limit_s else (fit, middle)
    fewer = (f"send at most about {fit} samples a request" if fit >= 1
             else "one sample costs that much: ask for less of it (fewer wrt, order 1)")
    forward = job.strategy not in (None, "auto", "forward", "forward-dual") and refusal(
        "forward", job.routine, order=job.order, per_sample=job.per_sample) is None
    return CostExceeded(
        f"the job was stopped after {progress:.0%} of its work: at that rate it would need "
        f"about {projected_s:.1f} s of device time, over the limit of {limit_s:g} s "
        f"(DYDC_MAX_JOB_COST); {fewer}{' or use strategy=forward' if forward else ''}",
        projected_s, limit_s)


def _count_launch(device: torch.device, jobs: Sequence[Job], seconds: float) -> None:
    place = str(device)
    metrics.child(metrics.LAUNCHES, place).inc()
    metrics.child(metrics.LAUNCH_SECONDS, place).observe(seconds)
    metrics.BATCH_REQUESTS.observe(len(jobs))
    metrics.BATCH_SAMPLES.observe(sum(job.n for job in jobs))


def _take_torch_threads() -> None:
    """Give the calling thread torch's intra-op thread count (DYDC_TORCH_THREADS) as its
    OpenMP threads, which ATen otherwise does at the thread's first parallel call: compiled
    graphs' parallel regions take the thread's count as they find it (builds.py, _package)."""
    torch.get_num_threads()


class DeviceWorker:
    """Owns one device through its executor: a thread that warms it up, then runs light
    launches and heavy jobs from the queue, the heavy ones a slice at a time."""

    def __init__(self, executor: Executor, queue: JobQueue,
                 warmup: Callable[[Executor], None] | None = None,
                 costs: CostModel | None = None, slice_s: float = 0.05):
        self.executor = executor
        self._queue = queue
        self._costs = costs
        self._slice_s = slice_s
        self._warmup = warmup
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._task: _Task | None = None
        self._running: list[Job] = []  # the light launch in progress
        # held while it launches (warms up, steps a heavy job): a launch on the event loop
        # (app.engine.runtime.inline) never runs beside one; and what light launches took
        self.launching = threading.Lock()
        self.launch_s: dict[tuple[object, ...], tuple[float, int]] = {}
        self._aborted: Exception | None = None
        self.failure: str | None = None
        self.restarts = 0

    @property
    def device(self) -> torch.device:
        return self.executor.device

    def start(self) -> None:
        self._ready.clear()
        self._thread = threading.Thread(target=self._loop, name=f"dydc-worker-{self.device}",
                                        daemon=True)
        self._thread.start()

    def join(self, timeout: float | None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self.alive

    @property
    def heavy_job(self) -> Job | None:
        """The heavy job in progress, if any."""
        task = self._task
        return task.job if task is not None else None

    def abort(self, error: Exception) -> None:
        """At the end of a shutdown's grace period: answer what this worker is running with
        ``error`` now; a heavy job stops at its next slice."""
        self._aborted = error
        metrics.CANCELLED.labels("shutdown").inc(len(self._running))
        running = [*self._running, *([self._task.job] if self._task else [])]
        resolve_all([(job, error) for job in running])

    def _measure(self, jobs: Sequence[Job]) -> None:
        """The routine's cost on this device, once, at its first launch (warm-up does it
        before when it runs)."""
        routine = jobs[0].routine
        if self._costs is not None and not self._costs.measured(routine):
            try:
                with TRANSFORMS_LOCK:
                    self._costs.measure(routine, self.device)
            except Exception:  # a routine undefined at ones: the launch itself will say
                log.debug("measuring routine %s failed", routine.name, exc_info=True)

    def execute(self, batch: list[Job]) -> None:
        """One light launch, on the calling thread, with :attr:`launching` held; its
        answers handed over."""
        self.executor.swap_in()  # between launches: graphs built meanwhile, loaded
        started = time.perf_counter()
        for job in batch:
            metrics.QUEUE_WAIT_SECONDS.observe(started - job.enqueued_at)
        self._measure(batch)
        self._running = batch
        launched = time.perf_counter()
        try:
            results = self.executor.run_batch(batch)
        except BaseException as exc:  # the thread is dying: no request may be lost with it
            lost = _died(self.device, exc)
            resolve_all([(job, lost) for job in batch])
            raise
        finally:
            self._running = []
        finished = time.perf_counter()
        _took(self.launch_s, batch, finished - launched)
        _count_launch(self.device, batch, finished - started)
        resolve_all(list(zip(batch, results, strict=True)))

    def _start(self, job: Job) -> None:
        self.executor.swap_in()  # between launches: graphs built meanwhile, loaded
        metrics.QUEUE_WAIT_SECONDS.observe(time.perf_counter() - job.enqueued_at)
        self._measure([job])
        self._task = _Task(job, self.executor.run_sliced(job, self._slice_s))

    def _finish(self, task: _Task, answer: JobResult | Exception | None,
                cancelled: str | None = None) -> None:
        """The heavy job is over: close its steps (freeing what they hold), count it, and
        hand over its answer."""
        try:
            task.steps.close()
            self._queue.done(task.job)
            if cancelled is not None:
                metrics.CANCELLED.labels(cancelled).inc()
            else:
                _count_launch(self.device, [task.job], task.busy_s)
            if answer is not None:
                task.job.resolve(answer)
        finally:
            self._task = None

    def _stop_error(self, task: _Task, reason: str) -> Exception | None:
        job = task.job
        if reason == "deadline":
            return DeadlineExceeded(time.perf_counter() - job.enqueued_at, running=True)
        if reason == "shutdown":
            return self._aborted
        return None  # disconnect, answered: nobody waits for an answer

    def _advance(self) -> None:
        """One slice of the heavy job in progress, unless it must stop first."""
        task = self._task
        assert task is not None
        job = task.job
        reason = "shutdown" if self._aborted is not None else job.stop_reason(
            time.perf_counter())
        if reason is not None:
            self._finish(task, self._stop_error(task, reason), cancelled=reason)
            return
        began = time.perf_counter()
        try:
            progress = next(task.steps)
        except StopIteration as done:
            task.busy_s += time.perf_counter() - began
            self._learn(task, task.busy_s, done.value.graph)
            self._finish(task, done.value)
            return
        except EngineError as exc:
            self._finish(task, exc)
            return
        except BaseException as exc:  # the thread is dying: no request may be lost with it
            self._finish(task, _died(self.device, exc))
            raise
        task.busy_s += time.perf_counter() - began
        projected = task.projected_s(progress)
        if projected is not None and self._costs is not None and self._costs.overrun(projected):
            self._learn(task, projected)
            self._finish(task, _overran(job, progress, projected, self._costs),
                         cancelled="cost")

    def _learn(self, task: _Task, seconds: float, graph: bool = False) -> None:
        if self._costs is not None and not graph:  # (a graph's speed prices its kind alone)
            job = task.job
            self._costs.learn(job.routine, job.strategy, job.n, passes(job), seconds, pairs(job))

    def _serve(self) -> None:
        while True:
            if self._task is None:
                work = self._queue.take()
                if work is None:
                    return
                with self.launching:
                    if isinstance(work, list):
                        self.execute(work)
                    else:
                        self._start(work)
                continue
            with self.launching:
                light = self._queue.take(block=False)
                if isinstance(light, list):
                    self.execute(light)
                self._advance()

    def _loop(self) -> None:
        _take_torch_threads()
        try:
            if self._warmup is not None:
                started = time.perf_counter()
                with self.launching:
                    self._warmup(self.executor)
                log.info("device worker warm on %s in %.2f s", self.device,
                         time.perf_counter() - started)
        except Exception as exc:
            self.failure = f"warm-up failed: {type(exc).__name__}: {exc}"
            log.exception("device worker warm-up on %s failed", self.device)
            return
        self.failure = None
        self._ready.set()
        try:
            self._serve()
        finally:
            self._ready.clear()


class WorkerPool:
    """One worker per device (one executor each) over one shared queue; restarts workers
    that die."""

    def __init__(self, executors: Sequence[Executor], queue: JobQueue,
                 warmup: Callable[[Executor], None] | None = None,
                 costs: CostModel | None = None, slice_s: float = 0.05,
                 inline_s: float = 0.0):
        self.queue = queue
        self.workers = [DeviceWorker(ex, queue, warmup, costs, slice_s) for ex in executors]
        # small launches on the event loop (app.engine.runtime.inline): one CPU device only
        only = self.workers[0] if len(self.workers) == 1 else None
        self.inline = (InlineLane(only, queue, inline_s)
                       if inline_s > 0 and only is not None and only.device.type == "cpu"
                       else None)
        self._started = False
        self._abort_timer: threading.Timer | None = None
        self.drain_started: float | None = None  # time.monotonic() of the drain's start

    @property
    def devices(self) -> list[torch.device]:
        return [w.device for w in self.workers]

    def start(self) -> None:
        self._started = True
        for w in self.workers:
            w.start()

    def submit(self, job: Job) -> None:
        """Queue ``job`` (on the event loop that awaits it), or keep it for a launch on
        that loop."""
        if self.inline is None or not self.inline.offer(job):
            self.queue.put(job)

    def withdraw(self, job: Job) -> bool:
        return (self.inline is not None and self.inline.withdraw(job)) \
            or self.queue.withdraw(job)

    def begin_drain(self, abort_after_s: float | None = None) -> None:
        """Readiness goes to 503 and new work is refused; queued work still runs. With
        ``abort_after_s``, whatever is still queued or running that long after the drain
        began is answered 503 then (the grace period's end)."""
        if self.drain_started is None:
            self.drain_started = time.monotonic()
            if abort_after_s is not None:
                self._abort_timer = threading.Timer(abort_after_s, self.abort)
                self._abort_timer.daemon = True
                self._abort_timer.start()
        self.queue.close()

    def abort(self) -> None:
        """Answer everything queued or running with 503 now; heavy jobs stop at their next
        slice, and a launch in progress finishes for nobody."""
        error = ServiceUnavailable("the service shut down before this request finished; "
                                   "retry on another replica")
        self.queue.close()
        self.queue.fail_all(error)
        if self.inline is not None:
            self.inline.fail_all(error)
        for w in self.workers:
            w.abort(error)

    def stop(self, grace: float = 30.0) -> None:
        """Drain the queue until ``grace`` seconds after the drain began (SIGTERM, or now);
        answer whatever is left after that with 503."""
        self.begin_drain()
        assert self.drain_started is not None
        deadline = self.drain_started + grace
        for w in self.workers:
            w.join(max(0.0, deadline - time.monotonic()))
        if self._abort_timer is not None:
            self._abort_timer.cancel()
        self.abort()
        metrics.WORKERS_READY.set(0)

    def revive(self) -> int:
        """Restart workers whose thread has died (not those that are draining)."""
        revived = 0
        if not self._started or self.queue.closed:
            return revived
        for w in self.workers:
            if not w.alive and w.failure is None:
                log.error("device worker on %s died; restarting it", w.device)
                w.restarts += 1
                metrics.WORKER_RESTARTS.inc()
                w.start()
                revived += 1
        metrics.WORKERS_READY.set(sum(w.ready for w in self.workers))
        return revived

    def not_ready_reason(self) -> str | None:
        if not self._started:
            return "device workers not started"
        if self.queue.closed:
            return "shutting down: draining the queue, not accepting work"
        reasons = []
        for w in self.workers:
            if w.ready:
                continue
            if w.failure:
                reasons.append(f"worker on {w.device} failed: {w.failure}")
            elif not w.alive:
                reasons.append(f"worker on {w.device} is down (restarting)")
            elif w.restarts:
                reasons.append(f"worker on {w.device} restarting (warming up)")
            else:
                reasons.append(f"worker on {w.device} warming up")
        return "; ".join(reasons) or None
