"""Request metrics of the computation endpoints."""

from __future__ import annotations

import time
from dataclasses import dataclass

from app import metrics

__all__ = ["RequestLabels", "record"]


@dataclass
class RequestLabels:
    """Filled in by the pipeline and codecs as they learn them; unknown names never become
    label values."""

    routine: str = "unknown"
    strategy: str = "none"
    status: int = 200


def record(labels: RequestLabels, endpoint: str, started: float) -> None:
    metrics.child(metrics.REQUESTS, labels.routine, labels.strategy, str(labels.status)).inc()
    metrics.child(metrics.REQUEST_SECONDS, labels.routine, endpoint).observe(
        time.perf_counter() - started
    )
