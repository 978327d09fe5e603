"""A v1 answer in tensor form: the JSON document with its arrays of numbers as raw tensors.

A caller whose ``Accept`` names :data:`TENSORS` (``application/vnd.dydc.tensors``) gets the
same document as the JSON answer, framed as the Open Inference Protocol's binary tensor data
(app.api.v2.framing, whose writer this reuses): the JSON header, ``Inference-Header-Content-
Length`` bytes long, in which every array of numbers is replaced by a reference

    {"datatype": "FP64", "shape": [N], "parameters": {"binary_data_size": 8 * N}}

and then each referenced tensor's bytes, little-endian and row-major, in the order the
references appear in the header (depth first, keys in order). Lists of names stay JSON.
Float64 bits travel as they are, so the numbers are exactly the JSON answer's; a large
answer is about a third of its JSON size and needs no parsing. Any other ``Accept`` (none,
``*/*``, ``application/json``, something unknown) gets plain JSON, and errors are always
problem+json.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from starlette.datastructures import Headers

from app.api.v2 import framing

__all__ = ["DATATYPES", "TENSORS", "encode", "wants_tensors"]

TENSORS = "application/vnd.dydc.tensors"
DATATYPES = {np.dtype("float64"): "FP64", np.dtype("float32"): "FP32"}


def wants_tensors(headers: Headers) -> bool:
    """Whether the request's ``Accept`` names the tensor form (with q above 0)."""
    accept = headers.get("accept")
    if not accept or TENSORS not in accept:
        return False
    for media_range in accept.split(","):
        media_type, *parameters = media_range.split(";")
        if media_type.strip().lower() == TENSORS:
            named = dict(p.strip().lower().partition("=")[::2] for p in parameters)
            try:
                return float(named.get("q", "1")) > 0
            except ValueError:  # a malformed weight: not asked for
                return False
    return False


def _referenced(value: Any, tensors: list[np.ndarray]) -> Any:
    """``value`` with every numpy array replaced by its reference (appended to ``tensors``)."""
    if isinstance(value, np.ndarray):
        array = np.ascontiguousarray(value, dtype=value.dtype if value.dtype in DATATYPES
                                     else np.float64)
        tensors.append(array)
        return {"datatype": DATATYPES[array.dtype], "shape": list(array.shape),
                "parameters": {"binary_data_size": array.nbytes}}
    if isinstance(value, dict):
        return {k: _referenced(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_referenced(v, tensors) for v in value]
    return value


def encode(doc: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """The body and its headers: the document's header, then its tensors."""
    tensors: list[np.ndarray] = []
    header = _referenced(doc, tensors)
    body, _, headers = framing.encode(header, tensors)
    headers.setdefault(framing.HEADER_LENGTH, str(len(body)))  # no tensors: all header
    return body, headers
