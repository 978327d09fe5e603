"""Writing v1 responses: orjson straight from the tensors' buffers, no list per element.
float64 numbers round-trip exactly (orjson writes the shortest repr)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import orjson
from starlette.responses import Response
from torch import Tensor

from app.engine import Comparison, Job, JobResult

__all__ = ["JSONBytes", "array_of", "encode_comparison", "encode_result", "job_fields"]

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


class JSONBytes(Response):
    media_type = "application/json"


def array_of(t: Tensor) -> np.ndarray:
    """(N, 1) -> a flat list of N; (N, M) -> rows."""
    a = t.numpy()
    return np.ascontiguousarray(a.reshape(-1) if a.shape[1] == 1 else a)


def job_fields(job: Job, device: str) -> dict[str, Any]:
    """What every answer says of its job after the routine's name: dtype, device, n, params
    and the routine's outputs."""
    return {"dtype": str(job.dtype).removeprefix("torch."), "device": device, "n": job.n,
            "params": job.params, "outputs": list(job.routine.outputs)}


def encode_result(job: Job, result: JobResult, started: float,
                  expression: str | None = None) -> bytes:
    """The answer; ``expression``, the canonical text of a caller's expression, after the
    routine's name."""
    doc: dict[str, Any] = {"routine": job.routine.name}
    if expression is not None:
        doc["expression"] = expression
    if result.strategy is not None:
        doc["strategy"] = result.strategy
    doc |= job_fields(job, result.device)
    doc["values"] = array_of(result.values)
    if result.strategy is not None:
        doc["derivatives"] = {name: array_of(d) for name, d in result.derivatives.items()}
        doc |= _beyond_first(job, result)
    doc["timing_ms"] = {
        "queue": round(result.queue_s * 1e3, 3),
        "compute": round(result.compute_s * 1e3, 3),
        "total": round((time.perf_counter() - started) * 1e3, 3),
    }
    return orjson.dumps(doc, option=_OPTIONS)


def _beyond_first(job: Job, result: JobResult) -> dict[str, Any]:
    """second_derivatives (order 2), bump (when finite differences ran) and check."""
    doc: dict[str, Any] = {}
    if job.order == 2:
        doc["second_derivatives"] = {k: array_of(d) for k, d in result.second_derivatives.items()}
    if job.bump is not None and (result.strategy == "finite-difference" or result.check):
        doc["bump"] = job.bump.echo(job.dtype, job.order)
    if result.check is not None:
        doc["check"] = {"strategy": result.check.strategy,
                        "max_abs_diff": result.check.max_abs_diff,
                        "max_rel_diff": result.check.max_rel_diff}
    return doc


def encode_comparison(job: Job, comparison: Comparison, expression: str | None = None) -> bytes:
    """The compare answer: one row per strategy, then the reference's numbers."""
    doc: dict[str, Any] = {"routine": job.routine.name}
    if expression is not None:
        doc["expression"] = expression
    doc |= {
        "n": job.n, "order": job.order,
        "reference": comparison.reference,
        "strategies": [{"strategy": row.strategy, "status": row.status, "reason": row.reason,
                        "time_ms": row.time_ms, "max_abs_diff": row.max_abs_diff,
                        "max_rel_diff": row.max_rel_diff} for row in comparison.rows],
    }
    result = comparison.result
    doc["values"] = array_of(result.values)
    doc["derivatives"] = {name: array_of(d) for name, d in result.derivatives.items()}
    if job.order == 2:
        doc["second_derivatives"] = {k: array_of(d) for k, d in result.second_derivatives.items()}
    return orjson.dumps(doc, option=_OPTIONS)
