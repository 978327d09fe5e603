"""Writing v1 responses: orjson straight from the tensors' buffers, no list per element.
float64 numbers round-trip exactly (orjson writes the shortest repr)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import orjson
from starlette.responses import Response
from torch import Tensor

from app.engine import Job, JobResult

__all__ = ["JSONBytes", "encode_result"]

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


class JSONBytes(Response):
    media_type = "application/json"


def _array(t: Tensor) -> np.ndarray:
    """(N, 1) -> a flat list of N; (N, M) -> rows."""
    a = t.numpy()
    return np.ascontiguousarray(a.reshape(-1) if a.shape[1] == 1 else a)


def encode_result(job: Job, result: JobResult, started: float) -> bytes:
    doc: dict[str, Any] = {"routine": job.routine.name}
    if result.strategy is not None:
        doc["strategy"] = result.strategy
    doc |= {
        "dtype": str(job.dtype).removeprefix("torch."),
        "device": result.device,
        "n": job.n,
        "params": job.params,
        "outputs": list(job.routine.outputs),
        "values": _array(result.values),
    }
    if result.strategy is not None:
        doc["derivatives"] = {name: _array(d) for name, d in result.derivatives.items()}
    doc["timing_ms"] = {
        "queue": round(result.queue_s * 1e3, 3),
        "compute": round(result.compute_s * 1e3, 3),
        "total": round((time.perf_counter() - started) * 1e3, 3),
    }
    return orjson.dumps(doc, option=_OPTIONS)
