"""The engine: strategies, the device worker and request validation. Knows nothing of HTTP."""

from app.engine.compiled.forward import CompiledForward
from app.engine.differentiation.bumping import Bump
from app.engine.differentiation.checking import Check
from app.engine.differentiation.strategies import STRATEGIES
from app.engine.runtime.admission import CostModel
from app.engine.runtime.batching import JobQueue
from app.engine.runtime.comparison import Comparison
from app.engine.runtime.executor import Executor
from app.engine.runtime.jobs import Job, JobKind, JobResult
from app.engine.runtime.request import Request
from app.engine.runtime.service import Engine
from app.engine.runtime.startup import cache_host_allocations, load_torch_extensions, warm_up
from app.engine.runtime.validation import DTYPES, MIN_TIMEOUT_MS, Limits
from app.engine.runtime.worker import DeviceUnavailable, DeviceWorker, WorkerPool, resolve_devices

__all__ = [
    "DTYPES",
    "MIN_TIMEOUT_MS",
    "STRATEGIES",
    "Bump",
    "Check",
    "Comparison",
    "CompiledForward",
    "CostModel",
    "DeviceUnavailable",
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
