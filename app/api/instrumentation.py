"""Request metrics of the computation endpoints."""

from __future__ import annotations

import time
from dataclasses import dataclass

from app import metrics
from app.context import current_record
from app.engine import Job, JobResult

__all__ = ["RequestLabels", "record"]


@dataclass
class RequestLabels:
    """Filled in by the pipeline and codecs as they learn them; unknown names never become
    label values."""

    routine: str = "unknown"
    strategy: str = "none"
    status: int = 200
    n: int | None = None
    queue_s: float | None = None
    compute_s: float | None = None

    def ran(self, job: Job, result: JobResult) -> None:
        """What the access log reports of a job that ran."""
        self.took(job.n, result.queue_s, result.compute_s)

    def took(self, n: int, queue_s: float, compute_s: float) -> None:
        """What the access log reports of work that ran: its samples, its wait and its
        compute (a request of several jobs, as scenarios, says them together)."""
        self.n, self.queue_s, self.compute_s = n, queue_s, compute_s


def _to_record(labels: RequestLabels) -> None:
    """Copy what the route learnt into the request's record (app.context)."""
    record = current_record()
    if record is None:
        return
    record.routine = labels.routine if labels.routine != "unknown" else None
    record.strategy = labels.strategy if labels.strategy not in ("none", "invalid") else None
    record.n = labels.n
    if labels.queue_s is not None and labels.compute_s is not None:
        record.queue_ms = round(labels.queue_s * 1e3, 3)
        record.compute_ms = round(labels.compute_s * 1e3, 3)


def record(labels: RequestLabels, endpoint: str, started: float) -> None:
    """Count the request, and hand what it learnt to the access log's record."""
    _to_record(labels)
    metrics.child(metrics.REQUESTS, labels.routine, labels.strategy, str(labels.status)).inc()
    metrics.child(metrics.REQUEST_SECONDS, labels.routine, endpoint).observe(
        time.perf_counter() - started
    )
