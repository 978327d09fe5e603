"""When to send a request again, and how long to wait first.

503 (the service's back-pressure) and connection failures are retried, 504 only when the
caller asks (the work may have been dropped at its deadline, and a second wait is the caller's
call), 4xx never. A ``Retry-After`` is honoured up to a cap; otherwise the wait is
exponential backoff with full jitter, so that many callers refused together do not come back
together.

Hand-written: httpx retries only failed connects (``HTTPTransport(retries=)``), not statuses,
and a retry library (tenacity, stamina) would be a third runtime dependency for a loop of a
few lines that must run both sync and async.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

__all__ = ["RetryPolicy"]


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 3
    retry_on_timeout: bool = False
    backoff: float = 0.5
    """First backoff in seconds; each retry doubles it (full jitter)."""
    max_backoff: float = 10.0
    max_retry_after: float = 30.0
    """A ``Retry-After`` longer than this is cut to it."""
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries is {self.retries}; use 0 or more")
        if self.backoff < 0 or self.max_backoff < 0 or self.max_retry_after < 0:
            raise ValueError("backoff, max_backoff and max_retry_after must not be negative")

    def wait_after(self, attempt: int, *, status: int | None = None,
                   retry_after: str | None = None,
                   exc: httpx.TransportError | None = None) -> float | None:
        """Seconds to wait before trying again after ``attempt`` (0 for the first try) got
        ``status`` or raised ``exc``; None when it is final."""
        if attempt >= self.retries:
            return None
        if exc is not None:
            retry = self._retry_exception(exc)
        else:
            retry = status == 503 or (status == 504 and self.retry_on_timeout)
        return self.delay(attempt, retry_after) if retry else None

    def _retry_exception(self, exc: httpx.TransportError) -> bool:
        """Connection failures always; a read or write timeout (the service may be computing)
        only with ``retry_on_timeout``."""
        if isinstance(exc, httpx.ReadTimeout | httpx.WriteTimeout):
            return self.retry_on_timeout
        return True

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0 for the first retry)."""
        jitter = self.rng.uniform(0, min(self.max_backoff, self.backoff * 2**attempt))
        given = _seconds(retry_after)
        if given is None:
            return jitter
        return min(given, self.max_retry_after) + self.rng.uniform(0, self.backoff)


def _seconds(retry_after: str | None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date (RFC 9110)."""
    if retry_after is None:
        return None
    value = retry_after.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
