"""The device workers and the queue they share.

Requests never compute on the event loop: they put a :class:`Job` on the :class:`JobQueue`
and await its future. One :class:`DeviceWorker` thread per device takes work from the queue;
an idle worker is the least loaded one, so work goes where there is room. ``JobQueue.take``
coalesces compatible jobs (same routine, dtype, wrt and a batchable strategy) into one launch,
each keeping its own parameter values.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

import torch

from app import metrics
from app.engine.compiled import CompiledForward
from app.engine.compute import batch_key, run_batch
from app.engine.errors import DeadlineExceeded, QueueFull, ServiceUnavailable
from app.engine.jobs import Job, resolve_all

__all__ = ["DeviceWorker", "JobQueue", "WorkerPool", "resolve_devices"]

log = logging.getLogger(__name__)


def _resolve_one(setting: str) -> list[torch.device]:
    if setting == "cpu":
        return [torch.device("cpu")]
    if setting in ("auto", "cuda"):
        if torch.cuda.is_available():
            return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
        if setting == "auto":
            return [torch.device("cpu")]
        raise RuntimeError("DYDC_DEVICE=cuda but CUDA is not available here; "
                           "use DYDC_DEVICE=cpu or auto")
    device = torch.device(setting)
    if device.type != "cuda":
        raise RuntimeError(f"DYDC_DEVICE={setting}: use auto, cpu, cuda, cuda:N or a list")
    if not torch.cuda.is_available():
        raise RuntimeError(f"DYDC_DEVICE={setting} but CUDA is not available here; "
                           "use DYDC_DEVICE=cpu or auto")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise RuntimeError(f"DYDC_DEVICE={setting} but only {torch.cuda.device_count()} "
                           "CUDA device(s) are visible")
    return [device]


def resolve_devices(setting: str) -> list[torch.device]:
    """DYDC_DEVICE -> devices: auto (every visible GPU, else the CPU), cpu, cuda (every
    visible GPU), cuda:N, or a comma-separated list such as cuda:0,cuda:2."""
    devices: list[torch.device] = []
    for part in setting.split(","):
        devices += _resolve_one(part.strip())
    return devices


class JobQueue:
    """A FIFO bounded in samples, that hands out batches of compatible jobs."""

    def __init__(self, max_samples: int, max_batch_samples: int, max_delay_s: float):
        self.max_samples = max_samples
        self.max_batch_samples = max_batch_samples
        self.max_delay_s = max_delay_s
        self._jobs: deque[Job] = deque()
        self._samples = 0
        self._cond = threading.Condition()
        self._closed = False
        metrics.QUEUE_BOUND_SAMPLES.set(max_samples)

    @property
    def closed(self) -> bool:
        return self._closed

    def _changed(self) -> None:
        metrics.QUEUE_DEPTH.set(len(self._jobs))
        metrics.QUEUE_SAMPLES.set(self._samples)

    def put(self, job: Job) -> None:
        with self._cond:
            if self._closed:
                metrics.REJECTIONS.labels("shutdown").inc()
                raise ServiceUnavailable("the service is shutting down; retry on another replica")
            if self._jobs and self._samples + job.n > self.max_samples:
                metrics.REJECTIONS.labels("queue_full").inc()
                raise QueueFull(
                    f"the queue is full ({self._samples} samples waiting, bound "
                    f"{self.max_samples}, DYDC_MAX_QUEUE_SAMPLES); retry after a short wait"
                )
            self._jobs.append(job)
            self._samples += job.n
            self._changed()
            self._cond.notify()

    def withdraw(self, job: Job) -> bool:
        """Take a job back if no worker has claimed it yet."""
        with self._cond:
            try:
                self._jobs.remove(job)
            except ValueError:
                return False
            self._samples -= job.n
            self._changed()
            return True

    def close(self) -> None:
        """Accept no more work; workers drain what is queued, then stop."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def fail_all(self, error: Exception) -> None:
        with self._cond:
            left, self._jobs, self._samples = list(self._jobs), deque(), 0
            self._changed()
        resolve_all([(job, error) for job in left])

    def _pop_live(self) -> Job | None:
        """The oldest job still worth running; drops cancelled and expired ones."""
        now = time.perf_counter()
        while self._jobs:
            job = self._jobs.popleft()
            self._samples -= job.n
            if job.future.done():  # the client went away
                continue
            if job.deadline is not None and now > job.deadline:
                metrics.REJECTIONS.labels("deadline").inc()
                job.resolve(DeadlineExceeded(now - job.enqueued_at))
                continue
            return job
        return None

    def _gather(self, batch: list[Job], key: object, samples: int) -> int:
        keep: deque[Job] = deque()
        for job in self._jobs:
            if (not job.future.done() and samples + job.n <= self.max_batch_samples
                    and batch_key(job) == key):
                batch.append(job)
                samples += job.n
                self._samples -= job.n
            else:
                keep.append(job)
        self._jobs = keep
        return samples

    def take(self) -> list[Job] | None:
        """Block for work; None once closed and drained. A lone job goes at once, a full
        batch goes at once, and a partial batch waits for company until its first job has
        waited DYDC_MAX_DELAY_MS."""
        with self._cond:
            while True:
                first = self._pop_live()
                if first is not None:
                    break
                self._changed()
                if self._closed:
                    return None
                self._cond.wait()
            batch = [first]
            key = batch_key(first)
            if key is not None:
                samples = first.n
                while True:
                    samples = self._gather(batch, key, samples)
                    wait = first.enqueued_at + self.max_delay_s - time.perf_counter()
                    if len(batch) == 1 or samples >= self.max_batch_samples or wait <= 0:
                        break
                    self._cond.wait(wait)
            self._changed()
            return batch


class DeviceWorker:
    """Owns one device: a thread that warms it up, then runs batches from the queue."""

    def __init__(self, device: torch.device, queue: JobQueue, chunk: int,
                 warmup: Callable[[torch.device], None] | None = None,
                 compiled: CompiledForward | None = None):
        self.device = device
        self._queue = queue
        self._chunk = chunk
        self._compiled = compiled
        self._warmup = warmup
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self.failure: str | None = None
        self.restarts = 0

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

    def _execute(self, batch: list[Job]) -> None:
        if self._compiled is not None:  # between launches: graphs built meanwhile, loaded
            self._compiled.swap_in(self.device)
        started = time.perf_counter()
        for job in batch:
            metrics.QUEUE_WAIT_SECONDS.observe(started - job.enqueued_at)
        try:
            results = run_batch(batch, self.device, self._chunk, self._compiled)
        except BaseException as exc:  # the thread is dying: no request may be lost with it
            lost = ServiceUnavailable(f"the device worker on {self.device} failed "
                                      f"({type(exc).__name__}); retry")
            resolve_all([(job, lost) for job in batch])
            raise
        device = str(self.device)
        metrics.child(metrics.LAUNCHES, device).inc()
        metrics.child(metrics.LAUNCH_SECONDS, device).observe(time.perf_counter() - started)
        metrics.BATCH_REQUESTS.observe(len(batch))
        metrics.BATCH_SAMPLES.observe(sum(job.n for job in batch))
        resolve_all(list(zip(batch, results, strict=True)))

    def _loop(self) -> None:
        try:
            if self._warmup is not None:
                started = time.perf_counter()
                self._warmup(self.device)
                log.info("device worker warm on %s in %.2f s", self.device,
                         time.perf_counter() - started)
        except Exception as exc:
            self.failure = f"warm-up failed: {type(exc).__name__}: {exc}"
            log.exception("device worker warm-up on %s failed", self.device)
            return
        self.failure = None
        self._ready.set()
        try:
            while (batch := self._queue.take()) is not None:
                self._execute(batch)
        finally:
            self._ready.clear()


class WorkerPool:
    """One worker per device over one shared queue; restarts workers that die."""

    def __init__(self, devices: Sequence[torch.device], queue: JobQueue, chunk: int,
                 warmup: Callable[[torch.device], None] | None = None,
                 compiled: CompiledForward | None = None):
        self.queue = queue
        self.workers = [DeviceWorker(d, queue, chunk, warmup, compiled) for d in devices]
        self._started = False
        self.drain_started: float | None = None  # time.monotonic() of the drain's start

    @property
    def devices(self) -> list[torch.device]:
        return [w.device for w in self.workers]

    def start(self) -> None:
        self._started = True
        for w in self.workers:
            w.start()

    def submit(self, job: Job) -> None:
        self.queue.put(job)

    def withdraw(self, job: Job) -> bool:
        return self.queue.withdraw(job)

    def begin_drain(self) -> None:
        """Readiness goes to 503 and new work is refused; queued work still runs."""
        if self.drain_started is None:
            self.drain_started = time.monotonic()
        self.queue.close()

    def stop(self, grace: float = 30.0) -> None:
        """Drain the queue until ``grace`` seconds after the drain began (SIGTERM, or now);
        fail whatever is left after that."""
        self.begin_drain()
        assert self.drain_started is not None
        deadline = self.drain_started + grace
        for w in self.workers:
            w.join(max(0.0, deadline - time.monotonic()))
        self.queue.fail_all(ServiceUnavailable("the service shut down before this request ran; "
                                               "retry on another replica"))
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
