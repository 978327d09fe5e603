"""The device worker: one thread owns the device and takes jobs from a queue.

Requests never compute on the event loop: they put a :class:`Job` on the queue and await its
future. ``_take`` is the seam where dynamic batching plugs in (it returns a list of jobs);
``_execute`` runs what it took.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable

import torch

from app import metrics
from app.engine.compute import run_job
from app.engine.errors import ServiceUnavailable
from app.engine.jobs import Job, JobResult

__all__ = ["DeviceWorker", "resolve_device"]

log = logging.getLogger(__name__)


def resolve_device(setting: str) -> torch.device:
    """Map DYDC_DEVICE (auto, cpu, cuda, cuda:N) to a device, refusing ones that are absent."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"DYDC_DEVICE={setting} but CUDA is not available here; "
                               "use DYDC_DEVICE=cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RuntimeError(f"DYDC_DEVICE={setting} but only {torch.cuda.device_count()} "
                               "CUDA device(s) are visible")
    elif device.type != "cpu":
        raise RuntimeError(f"DYDC_DEVICE={setting}: use auto, cpu, cuda or cuda:N")
    return device


class DeviceWorker:
    """Owns one device; runs queued jobs one launch at a time on its own thread."""

    def __init__(self, device: torch.device, warmup: Callable[[torch.device], None] | None = None):
        self.device = device
        self._warmup = warmup
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._ready = threading.Event()
        self._failure: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=f"dydc-worker-{self.device}",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish queued jobs, then end the thread; jobs still queued at the timeout fail."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        self._ready.clear()
        with self._cond:
            left, self._queue = list(self._queue), deque()
        for job in left:
            job.resolve(ServiceUnavailable("the service is shutting down; retry on another replica"))

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self.alive

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def not_ready_reason(self) -> str | None:
        if self.ready:
            return None
        if self._failure:
            return f"device worker failed: {self._failure}"
        if self._stopping:
            return "shutting down"
        if self._thread is None:
            return "device worker not started"
        if not self.alive:
            return "device worker thread has exited"
        return f"device worker warming up on {self.device}"

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    # -- the queue ---------------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._stopping or not self.alive:
                raise ServiceUnavailable(self.not_ready_reason() or "device worker unavailable")
            self._queue.append(job)
            metrics.QUEUE_DEPTH.set(len(self._queue))
            self._cond.notify()

    def _take(self) -> list[Job] | None:
        """Block until there is work; None once stopping with an empty queue."""
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            while self._queue:
                job = self._queue.popleft()
                metrics.QUEUE_DEPTH.set(len(self._queue))
                if not job.future.done():  # skip requests whose client went away while queued
                    return [job]
            return None if self._stopping else []

    def _execute(self, batch: list[Job]) -> None:
        for job in batch:
            result: JobResult | BaseException
            try:
                result = run_job(job, self.device)
            except Exception as exc:  # every failure belongs to its request, not to the worker
                result = exc
            job.resolve(result)

    def _loop(self) -> None:
        try:
            if self._warmup is not None:
                started = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self._warmup(self.device)
                log.info("device worker warm on %s in %.2f s", self.device,
                         time.perf_counter() - started)
        except Exception as exc:
            self._failure = f"warm-up failed: {type(exc).__name__}: {exc}"
            log.exception("device worker warm-up failed")
            return
        self._ready.set()
        while (batch := self._take()) is not None:
            if batch:
                self._execute(batch)
