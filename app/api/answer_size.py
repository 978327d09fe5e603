"""What an answer will weigh, priced when its request is admitted, before its job runs: an
answer is far larger than its request when many derivatives are asked of few inputs
(``order: 2, cross: true`` on softmax made a 2.2 MB request a 192 MB answer), and it is
built whole in memory. Over DYDC_MAX_RESPONSE_BYTES the request is refused (422) with the
estimate, the limit and what to ask for instead.

The price is the arrays the answer holds (values, one per derivative, one per second-order
pair, each N x M; v1 also echoes per-sample parameters), each number at what its encoding
costs: :data:`JSON_NUMBER_BYTES` as JSON text (orjson writes a float64 in at most 24
characters and a comma, about 20 on average: priced at 24, answers of such numbers were
admitted 4% over the limit), its item size as v2 binary tensor data. The answer's fixed
fields (names, parameters, timings: a few hundred bytes) are not priced.
"""

from __future__ import annotations

import numpy as np

from app.engine import Job, JobKind
from app.engine.differentiation.bumping import pairs
from app.errors import ResponseTooLarge

__all__ = ["JSON_NUMBER_BYTES", "answer_arrays", "check_json_answer", "check_tensor_answer",
           "echoed_numbers"]

JSON_NUMBER_BYTES = 25


def answer_arrays(job: Job) -> int:
    """Arrays of N x M numbers in ``job``'s answer: the values, each first derivative and each
    second-order pair asked for."""
    if job.kind is JobKind.EVALUATE:
        return 1
    second = len(pairs(job.wrt, job.cross)) if job.order == 2 else 0
    return 1 + len(job.wrt) + second


def echoed_numbers(job: Job) -> int:
    """Numbers per sample the v1 answer echoes: its per-sample parameters."""
    return sum(1 for v in job.params.values() if isinstance(v, np.ndarray))


def check_json_answer(job: Job, limit: int) -> None:
    """v1 (and compare): every array, and the per-sample parameters echoed, as JSON."""
    numbers = answer_arrays(job) * len(job.routine.outputs) + echoed_numbers(job)
    _check(job, numbers * JSON_NUMBER_BYTES, limit, "as JSON")


def check_tensor_answer(job: Job, outputs: list[tuple[str, bool]], itemsize: int,
                        limit: int) -> None:
    """v2: the output tensors asked for, each (name, as binary) of N x M numbers."""
    m = len(job.routine.outputs)
    per_sample = sum(m * (itemsize if binary else JSON_NUMBER_BYTES) for _, binary in outputs)
    binary = sum(1 for _, b in outputs if b)
    encoding = ("as binary tensors" if binary == len(outputs) else
                "as JSON tensors" if not binary else f"{binary} of {len(outputs)} in binary")
    _check(job, per_sample, limit, encoding)


def _check(job: Job, bytes_per_sample: int, limit: int, encoding: str) -> None:
    """ResponseTooLarge when ``job.n`` samples of ``bytes_per_sample`` go past ``limit``."""
    estimate = job.n * bytes_per_sample
    if estimate <= limit:
        return
    at_most = max(1, limit // bytes_per_sample)
    raise ResponseTooLarge(
        f"the answer would be about {estimate} bytes ({job.n} samples x {bytes_per_sample} "
        f"bytes, {answer_arrays(job)} arrays of {len(job.routine.outputs)} outputs "
        f"{encoding}); the limit is {limit} (DYDC_MAX_RESPONSE_BYTES). Ask for less: fewer "
        "derivatives (wrt) or second-order pairs (cross: false), binary tensors over v2 (8 "
        f"bytes a number, 4 in FP32) instead of JSON, or batches of at most {at_most} samples"
    )
