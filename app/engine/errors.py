"""What can go wrong in the engine, independent of any protocol.

    EngineError
     ├── UnknownRoutine        no routine by that name               (HTTP 404)
     ├── InvalidRequest        the request cannot be computed as is  (HTTP 422)
     │    ├── StrategyCapExceeded   N is over a strategy's cap
     │    └── RoutineFailed         the routine raised, or gave non-finite numbers, on these inputs
     ├── RequestTooLarge       over a configured size limit          (HTTP 413)
     ├── DeadlineExceeded      still queued when its deadline passed (HTTP 504)
     └── ServiceUnavailable    the device worker cannot take work    (HTTP 503)
          └── QueueFull             the queue is at its bound; retry shortly

Each message says what to change. The HTTP statuses are assigned in ``app.errors`` alone.
"""

from __future__ import annotations

__all__ = [
    "DeadlineExceeded",
    "EngineError",
    "InvalidRequest",
    "QueueFull",
    "RequestTooLarge",
    "RoutineFailed",
    "ServiceUnavailable",
    "StrategyCapExceeded",
    "UnknownRoutine",
]


class EngineError(Exception):
    """Base of every error the engine raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UnknownRoutine(EngineError):
    """No routine is registered under the requested name."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"no routine named {name!r}; registered routines: {', '.join(known)}")
        self.name = name


class InvalidRequest(EngineError):
    """The request is well-formed but cannot be computed: bad names, shapes or values."""


class StrategyCapExceeded(InvalidRequest):
    """The batch is larger than the cap of the requested strategy."""


class RoutineFailed(InvalidRequest):
    """The routine raised, or produced non-finite numbers, for these inputs."""


class RequestTooLarge(EngineError):
    """The batch is over the configured per-request limit."""


class ServiceUnavailable(EngineError):
    """The worker is not running (starting, stopping or failed); try again later."""


class QueueFull(ServiceUnavailable):
    """The queue holds DYDC_MAX_QUEUE_SAMPLES already: refused at once, never a hang."""


class DeadlineExceeded(EngineError):
    """The request was still queued when its deadline passed, and was dropped unrun."""

    def __init__(self, waited_s: float) -> None:
        super().__init__(
            f"the request waited in the queue for its whole deadline ({waited_s * 1e3:.0f} ms) "
            "and was not run; retry, or raise timeout_ms"
        )
