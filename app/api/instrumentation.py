"""Request metrics around the computation endpoints."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from app import metrics
from app.errors import CLIENT_CLOSED_REQUEST, status_for

__all__ = ["RequestLabels", "observe"]


@dataclass
class RequestLabels:
    """Filled in by the route as it learns them; unknown names never become label values."""

    routine: str = "unknown"
    strategy: str = "none"
    status: int = 200


@asynccontextmanager
async def observe(endpoint: str) -> AsyncIterator[RequestLabels]:
    labels = RequestLabels()
    started = time.perf_counter()
    metrics.REQUESTS_IN_FLIGHT.inc()
    try:
        yield labels
    except BaseException as exc:
        labels.status = (status_for(exc) if isinstance(exc, Exception)
                         else CLIENT_CLOSED_REQUEST)
        raise
    finally:
        metrics.REQUESTS_IN_FLIGHT.dec()
        metrics.child(metrics.REQUESTS, labels.routine, labels.strategy, str(labels.status)).inc()
        metrics.child(metrics.REQUEST_SECONDS, labels.routine, endpoint).observe(
            time.perf_counter() - started
        )
