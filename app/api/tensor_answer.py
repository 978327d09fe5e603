"""A v1 answer in tensor form: the JSON document with its arrays of numbers as raw tensors.

A caller whose ``Accept`` prefers :data:`TENSORS` (``application/vnd.dydc.tensors``) to JSON
(:func:`wants_tensors`) gets the
same document as the JSON answer, framed as the Open Inference Protocol's binary tensor data
(app.api.v2.framing, whose writer this reuses): the JSON header, ``Inference-Header-Content-
Length`` bytes long, in which every array of numbers is replaced by a reference

    {"datatype": "FP64", "shape": [N], "parameters": {"binary_data_size": 8 * N}}

and then each referenced tensor's bytes, little-endian and row-major, in the order the
references appear in the header (depth first, keys in order). Lists of names stay JSON.
Float64 bits travel as they are, so the numbers are exactly the JSON answer's; a large
answer is about a third of its JSON size and needs no parsing. Any other ``Accept`` (none,
``*/*``, ``application/json``, something unknown, or JSON weighted above the tensor form)
gets plain JSON, and errors are always problem+json.
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
    """Whether the request's ``Accept`` prefers the tensor form to JSON (RFC 9110's
    negotiation, media types compared without case): the tensor form's weight above 0 and
    at least JSON's, which is that of the most specific range that matches it
    (``application/json``, then ``application/*``, then ``*/*``; 0 if none does). Where
    both weigh the same, the caller named the tensor form, so it gets it."""
    accept = headers.get("accept")
    if not accept or "tensors" not in accept.lower():
        return False
    tensors = 0.0
    json_by_range: dict[str, float] = {}
    for media_range in accept.split(","):
        media_type, *parameters = media_range.split(";")
        media_type = media_type.strip().lower()
        weight = _weight(parameters)
        if media_type == TENSORS:
            tensors = max(tensors, weight)
        elif media_type in _JSON_RANGES:
            json_by_range[media_type] = max(json_by_range.get(media_type, 0.0), weight)
    json = next((json_by_range[r] for r in _JSON_RANGES if r in json_by_range), 0.0)
    return tensors > 0 and tensors >= json


_JSON_RANGES = ("application/json", "application/*", "*/*")  # most specific first


def _weight(parameters: list[str]) -> float:
    """A media range's q (1 if absent; 0, not acceptable, if malformed or out of range)."""
    for parameter in parameters:
        name, _, value = parameter.strip().partition("=")
        if name.strip().lower() == "q":
            try:
                q = float(value.strip())
            except ValueError:
                return 0.0
            return q if 0.0 <= q <= 1.0 else 0.0
    return 1.0


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
