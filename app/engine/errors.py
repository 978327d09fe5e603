"""What can go wrong in the engine, independent of any protocol.

    EngineError
     ├── UnknownRoutine        no routine by that name               (HTTP 404)
     ├── InvalidRequest        the request cannot be computed as is  (HTTP 422)
     │    ├── StrategyCapExceeded   N is over a strategy's cap
     │    ├── StrategyDisabled      the operator turned the strategy off (DYDC_STRATEGIES)
     │    ├── CostExceeded          the job's estimated or measured cost is over DYDC_MAX_JOB_COST
     │    └── RoutineFailed         the routine raised, or gave non-finite numbers, on these inputs
     │         └── NonFinite             a non-finite value or derivative, at a sample it names
     ├── RequestTooLarge       over a configured size limit          (HTTP 413)
     ├── DeadlineExceeded      its deadline passed before it finished (HTTP 504)
     └── ServiceUnavailable    the service cannot take the work now  (HTTP 503)
          └── QueueFull             the queue is at its bound; retry shortly

Each message says what to change. The HTTP statuses are assigned in ``app.errors`` alone.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "CostExceeded",
    "DeadlineExceeded",
    "EngineError",
    "GraphBuilding",
    "InvalidRequest",
    "NonFinite",
    "NotFiniteInput",
    "QueueFull",
    "RequestTooLarge",
    "RoutineFailed",
    "ServiceUnavailable",
    "StrategyCapExceeded",
    "StrategyDisabled",
    "UnknownRoutine",
    "listed",
]

# Names a message echoes at most: a request naming 10,000 unknown parameters is told about
# the first few and how many more, not answered with every name it sent.
LISTED_AT_MOST = 10


def listed(names: Iterable[object], at_most: int = LISTED_AT_MOST, *, quoted: bool = False) -> str:
    """``names`` separated by commas, the first ``at_most`` of them and "... and N more"."""
    items = list(names)
    shown = ", ".join(repr(n) if quoted else str(n) for n in items[:at_most])
    return shown if len(items) <= at_most else f"{shown} ... and {len(items) - at_most} more"


class EngineError(Exception):
    """Base of every error the engine raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def reword(self, message: str) -> None:
        """Say the same refusal in other words (a protocol's field names): the message, and
        what str() of the exception gives."""
        self.message = message
        self.args = (message,)


class UnknownRoutine(EngineError):
    """No routine is registered under the requested name."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"no routine named {name!r}; registered routines: {', '.join(known)}")
        self.name = name


class InvalidRequest(EngineError):
    """The request is well-formed but cannot be computed: bad names, shapes or values."""


class NotFiniteInput(InvalidRequest):
    """An input that is not a finite number: ``sample`` and ``feature`` (its column) say
    where, for a protocol that lays inputs out otherwise to say it in its own terms."""

    def __init__(self, message: str, sample: int, feature: int, dtype: str) -> None:
        super().__init__(message)
        self.sample = sample
        self.feature = feature
        self.dtype = dtype


class StrategyCapExceeded(InvalidRequest):
    """The batch is larger than the cap of the requested strategy."""


class StrategyDisabled(InvalidRequest):
    """The strategy exists, but the operator left it out of DYDC_STRATEGIES."""


class CostExceeded(InvalidRequest):
    """The job would cost more device time than DYDC_MAX_JOB_COST: estimated before it is
    queued, or measured on its first slices (then it is stopped there). An estimate comes
    with its seconds and the limit, for a caller that laid out the job (scenarios: S x N
    samples) to say it in its own terms."""

    def __init__(self, message: str, estimate_s: float | None = None,
                 limit_s: float | None = None) -> None:
        super().__init__(message)
        self.estimate_s = estimate_s
        self.limit_s = limit_s


class RoutineFailed(InvalidRequest):
    """The routine raised, or produced non-finite numbers, for these inputs."""


class NonFinite(RoutineFailed):
    """A non-finite ``what`` (a value, a derivative) at row ``sample`` of the job's batch: a caller
    that laid out the batch (scenarios: S x N rows) can name the row in its own terms."""

    def __init__(self, message: str, sample: int, what: str) -> None:
        super().__init__(message)
        self.sample = sample
        self.what = what


class RequestTooLarge(EngineError):
    """The batch is over the configured per-request limit."""


class ServiceUnavailable(EngineError):
    """The worker is not running (starting, stopping or failed); try again later."""


class QueueFull(ServiceUnavailable):
    """The queue holds DYDC_MAX_QUEUE_SAMPLES already, or more heavy work than the job's
    deadline leaves time for: refused at once, never a hang."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class GraphBuilding(ServiceUnavailable):
    """The job is over DYDC_MAX_JOB_COST at eager speed, and a compiled graph that serves its
    kind is being built: retry once it is (Retry-After), when it is priced at the graph's
    speed."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(EngineError):
    """The request's deadline passed: still queued (dropped unrun), or running (stopped at
    the next slice)."""

    def __init__(self, waited_s: float, *, running: bool = False,
                 deadline_s: float | None = None) -> None:
        given = "" if deadline_s is None else f" ({deadline_s * 1e3:.0f} ms)"
        super().__init__(
            f"the request ran past its deadline ({waited_s * 1e3:.0f} ms after it was queued) "
            "and was stopped; raise timeout_ms, send fewer samples, or use a cheaper strategy"
            if running else
            f"the request's deadline{given} passed while it waited in the queue "
            f"({waited_s * 1e3:.0f} ms) and it was not run; retry, or raise timeout_ms"
        )
