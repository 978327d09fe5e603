"""The engine: strategies, the device worker and request validation. Knows nothing of HTTP."""

from app.engine.admission import CostModel
from app.engine.batching import JobQueue
from app.engine.bumping import Bump
from app.engine.checking import Check
from app.engine.comparison import Comparison
from app.engine.compiled import CompiledForward
from app.engine.compute import Executor
from app.engine.jobs import Job, JobKind, JobResult
from app.engine.request import Request
from app.engine.service import Engine
from app.engine.startup import cache_host_allocations, load_torch_extensions, warm_up
from app.engine.strategies import STRATEGIES
from app.engine.validation import DTYPES, MIN_TIMEOUT_MS, Limits
from app.engine.worker import DeviceWorker, WorkerPool, resolve_devices

__all__ = [
    "DTYPES",
    "MIN_TIMEOUT_MS",
    "STRATEGIES",
    "Bump",
    "Check",
    "Comparison",
    "CompiledForward",
    "CostModel",
    "DeviceWorker",
    "Engine",
    "Executor",
    "Job",
    "JobKind",
    "JobQueue",
    "JobResult",
    "Limits",
    "Request",
    "WorkerPool",
    "cache_host_allocations",
    "load_torch_extensions",
    "resolve_devices",
    "warm_up",
]
