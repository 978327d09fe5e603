"""The engine: strategies, the device worker and request validation. Knows nothing of HTTP."""

from app.engine.jobs import Job, JobKind, JobResult
from app.engine.service import DTYPES, Engine, Limits, warm_up
from app.engine.strategies import STRATEGIES
from app.engine.worker import DeviceWorker, resolve_device

__all__ = [
    "DTYPES",
    "STRATEGIES",
    "DeviceWorker",
    "Engine",
    "Job",
    "JobKind",
    "JobResult",
    "Limits",
    "resolve_device",
    "warm_up",
]
