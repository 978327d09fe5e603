"""Large batches: split under the service's limits, and the answers put back together in order.

A chunk stays under ``max_samples``, the strategy's cap (an O(N^2) strategy is capped because
its cost grows with N; its per-sample answers do not depend on the rest of the batch), a
body of ``max_body_bytes`` at the most a number can cost on the chosen wire, and an answer
of ``max_response_bytes`` as the service prices it (:func:`answer_numbers`). Samples are
independent, so the merged answer is the one a single request would get.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from dydc import v1
from dydc.batches import Batch
from dydc.options import Kind, Options
from dydc.results import Check, Limits, Result, RoutineInfo

__all__ = ["answer_numbers", "chunk_bounds", "merge"]

_HEADER_ALLOWANCE = 64 * 1024  # the JSON around the arrays: params, wrt, a v2 header


def answer_numbers(info: RoutineInfo, opts: Options, batch: Batch, binary: bool) -> int:
    """Numbers a sample's answer holds, as the service prices it: values, each derivative and
    each second-order pair, of every output; v1 also echoes the per-sample parameters."""
    arrays = 1
    if opts.kind is not Kind.EVALUATE:
        d = len(opts.wrt) if opts.wrt else len(info.params)
        arrays += d + ((d * (d + 1) // 2 if opts.cross else d) if opts.order == 2 else 0)
    return arrays * len(info.outputs) + (0 if binary else len(batch.per_sample))


def _per_chunk(batch: Batch, limits: Limits, strategy: str, binary: bool,
               answer: int | None) -> int:
    sizes = [batch.n]
    if limits.max_response_bytes is not None and answer:
        per_number = batch.samples.dtype.itemsize if binary else limits.json_number_bytes
        sizes.append(limits.max_response_bytes // (answer * per_number))
    if limits.max_samples is not None:
        sizes.append(limits.max_samples)
    if strategy in limits.strategy_caps:
        sizes.append(limits.strategy_caps[strategy])
    if limits.max_body_bytes is not None:
        per_number = batch.samples.dtype.itemsize if binary else v1.BYTES_PER_NUMBER
        room = max(limits.max_body_bytes - _HEADER_ALLOWANCE, limits.max_body_bytes // 2)
        sizes.append(room // (per_number * batch.width + 2))
    return max(1, min(sizes))


def chunk_bounds(batch: Batch, limits: Limits, strategy: str = "auto",
                 binary: bool = False, answer: int | None = None) -> list[tuple[int, int]]:
    """(start, stop) of each chunk, in order; one chunk when the batch fits (or is empty, for
    the service to say so). ``answer``: the numbers of a sample's answer, when known."""
    size = _per_chunk(batch, limits, strategy, binary, answer)
    return [(start, min(start + size, batch.n)) for start in range(0, batch.n, size)] or [(0, 0)]


def _merge_check(checks: Sequence[Check | None]) -> Check | None:
    present = [c for c in checks if c is not None]
    if not present:
        return None
    abs_diff: dict[str, float] = {}
    rel_diff: dict[str, float] = {}
    for c in present:
        for k, v in c.max_abs_diff.items():
            abs_diff[k] = max(abs_diff.get(k, v), v)
        for k, v in c.max_rel_diff.items():
            # NaN (no reference to divide by in that chunk) gives way to any number
            before = rel_diff.get(k, v)
            rel_diff[k] = v if math.isnan(before) else before if math.isnan(v) else max(before, v)
    return Check(present[0].strategy, abs_diff, rel_diff)


def _merge_timing(parts: Sequence[Result], wall_ms: float) -> dict[str, float] | None:
    timings = [p.timing_ms for p in parts if p.timing_ms is not None]
    if not timings:
        return None
    return {"queue": max(t.get("queue", 0.0) for t in timings),
            "compute": round(sum(t.get("compute", 0.0) for t in timings), 3),
            "total": round(wall_ms, 3)}


def merge(parts: Sequence[Result], wall_ms: float) -> Result:
    """One result from the chunks' results, in order. ``timing_ms``: the longest queue wait,
    the compute summed over chunks, and the wall time of the whole call."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    params = {k: (np.concatenate([np.asarray(p.params[k]) for p in parts]).tolist()
                  if isinstance(v, list) else v) for k, v in first.params.items()}
    return Result(
        routine=first.routine,
        values=np.concatenate([p.values for p in parts]),
        derivatives={k: np.concatenate([p.derivatives[k] for p in parts])
                     for k in first.derivatives},
        second_derivatives={k: np.concatenate([p.second_derivatives[k] for p in parts])
                            for k in first.second_derivatives},
        strategy=first.strategy, dtype=first.dtype,
        device=",".join(dict.fromkeys(p.device for p in parts)),
        n=sum(p.n for p in parts), timing_ms=_merge_timing(parts, wall_ms),
        check=_merge_check([p.check for p in parts]), bump=first.bump, params=params,
        outputs=first.outputs, request_id=first.request_id, protocol=first.protocol,
        chunks=len(parts), expression=first.expression,
    )
