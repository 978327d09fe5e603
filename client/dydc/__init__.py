"""dydc-client: call the dydc sensitivity service from Python, without torch.

    import dydc
    with dydc.Client("http://127.0.0.1:8000") as client:
        result = client.sensitivities("linear", [0, 1, 2], {"C": -5.0})
        result.derivatives["C"]   # array([0., 1., 2.])
"""

from __future__ import annotations

from dydc.client import AUTO_BINARY_MIN_SAMPLES, AsyncClient, Client
from dydc.errors import (
    ApiError,
    ConnectionFailed,
    DeadlineExceeded,
    DydcError,
    InvalidRequest,
    NotFound,
    TooLarge,
    Unauthorized,
    Unavailable,
)
from dydc.results import (
    Bump,
    Check,
    Comparison,
    Limits,
    Param,
    Result,
    RoutineInfo,
    StrategyInfo,
    StrategyRow,
)
from dydc.scenarios import ScenarioResult

__version__ = "0.1.0"

__all__ = [
    "AUTO_BINARY_MIN_SAMPLES",
    "ApiError",
    "AsyncClient",
    "Bump",
    "Check",
    "Client",
    "Comparison",
    "ConnectionFailed",
    "DeadlineExceeded",
    "DydcError",
    "InvalidRequest",
    "Limits",
    "NotFound",
    "Param",
    "Result",
    "RoutineInfo",
    "ScenarioResult",
    "StrategyInfo",
    "StrategyRow",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
    "__version__",
]
