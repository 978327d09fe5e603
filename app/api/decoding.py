"""v1 request bodies: strict JSON, a count of the samples before anything is parsed, and
inputs turned into one float64 array with errors that point at the offending element.

A large flat ``inputs`` array takes a fast path: it is found in the raw bytes, parsed alone and
turned into an array in one call, skipping the per-element type scan; anything unusual falls
back to the general path, so every error message stays the same. (Parsing the numbers with
numpy's own text parsers was measured and is 3-4x *slower* than orjson: see bench/bench_wire.py.)
"""

from __future__ import annotations

import json
import re
from itertools import chain
from typing import Any

import numpy as np
import orjson

from app.engine.errors import InvalidRequest
from app.errors import MalformedBody

__all__ = [
    "count_samples",
    "decode_inputs",
    "parse_document",
    "parse_json",
]

_NUMBER = (int, float)


def parse_json(body: bytes) -> Any:
    if not body or body.isspace():
        raise MalformedBody("request body is empty; send a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as strict_error:
        # Python clients write NaN and Infinity by default: accept them here, so that the
        # engine can say which element is not finite, rather than call the JSON malformed.
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            raise MalformedBody(f"request body is not valid JSON: {strict_error}") from None


# The key, the colon and the opening bracket of an "inputs" array.
_INPUTS_ARRAY = re.compile(rb'"inputs"\s*:\s*\[')
# The first byte of every JSON value that is not a number (and of NaN, Infinity), and '['.
_NOT_NUMBERS = tuple(bytes([c]) for c in b'[{"tfnNI')


def _parse_with_flat_inputs(body: bytes) -> dict[str, Any] | None:
    """The document with ``inputs`` already a float64 array, when ``inputs`` is a flat list of
    JSON numbers; None whenever anything is unusual (the general path then decides)."""
    key = body.find(b'"inputs"')
    match = _INPUTS_ARRAY.match(body, key) if key >= 0 else None
    if match is None:
        return None
    start = match.end() - 1
    end = body.find(b"]", start)
    if end < 0 or body.find(b'"inputs"', end) >= 0:
        return None
    if any(body.find(marker, start + 1, end) >= 0 for marker in _NOT_NUMBERS):
        return None
    rest = body[:start] + b"0" + body[end + 1:]
    if b"\\" in rest:  # without escapes, the one literal "inputs" is the one key of that name
        return None
    try:
        numbers = orjson.loads(memoryview(body)[start:end + 1])
        doc = orjson.loads(rest)
        inputs = np.array(numbers, dtype=np.float64)
    except (orjson.JSONDecodeError, OverflowError, ValueError, TypeError):
        return None
    if not isinstance(doc, dict) or type(doc.get("inputs")) is not int:
        return None
    doc["inputs"] = inputs
    return doc


def count_samples(body: bytes) -> int | None:
    """The number of samples in a v1 body's ``inputs``, counted in the raw bytes without
    parsing them: exact when ``inputs`` is a flat list of numbers or a list of rows of
    numbers, None when its end cannot be found (the parse then decides)."""
    key = body.find(b'"inputs"')
    match = _INPUTS_ARRAY.match(body, key) if key >= 0 else None
    if match is None:
        return None
    start = match.end()
    first = start
    while first < len(body) and body[first] in b" \t\r\n":
        first += 1
    if first == len(body) or body[first] == ord("]"):
        return 0
    rows = body[first] == ord("[")
    end = body.find(b"]]" if rows else b"]", first)
    if end < 0:
        return None
    # Two passes over the bytes in all (this find and the count), each holding the event loop
    # for a few ms per 10 MB. A body whose inputs hold strings or objects is invalid anyway:
    # if its separators outnumber the limit it is refused as too large instead of malformed.
    return body.count(b"[", first, end) if rows else body.count(b",", first, end) + 1


def parse_document(body: bytes) -> Any:
    """A v1 request body: JSON, with a flat ``inputs`` list already a float64 array when the
    fast path applies (:func:`decode_inputs` accepts both)."""
    fast = _parse_with_flat_inputs(body)
    return fast if fast is not None else parse_json(body)


def _describe(v: Any) -> str:
    text = json.dumps(v) if isinstance(v, (str, bool)) or v is None else type(v).__name__
    return "null" if v is None else text


def _not_a_number(where: str, v: Any) -> InvalidRequest:
    return InvalidRequest(f"inputs{where} is {_describe(v)}; inputs must be numbers")


def _to_array(values: list[Any], shape_hint: str) -> np.ndarray:
    try:
        return np.array(values, dtype=np.float64)
    except OverflowError:  # an integer beyond float64
        raise InvalidRequest(
            f"inputs has a number too large for float64 ({shape_hint}); inputs must be finite"
        ) from None


def decode_inputs(inputs: Any) -> np.ndarray:
    """A flat list of N numbers -> (N,); a list of N rows of D numbers -> (N, D).
    An array from the fast path of :func:`read_json` is already that."""
    if isinstance(inputs, np.ndarray):
        return inputs
    if not isinstance(inputs, list):
        raise InvalidRequest(
            f"inputs is {_describe(inputs)}; send a list of numbers, or a list of rows of numbers"
        )
    if not inputs:
        return np.empty((0,), dtype=np.float64)
    kinds = set(map(type, inputs))
    if kinds <= {int, float}:
        return _to_array(inputs, "flat list")
    if kinds == {list}:
        width = len(inputs[0])
        for i, row in enumerate(inputs):
            if len(row) != width:
                raise InvalidRequest(
                    f"inputs is ragged: inputs[{i}] has {len(row)} numbers but inputs[0] has "
                    f"{width}; every row needs the same number of features"
                )
        if not set(map(type, chain.from_iterable(inputs))) <= {int, float}:
            for i, row in enumerate(inputs):
                for j, v in enumerate(row):
                    if type(v) not in _NUMBER:
                        raise _not_a_number(f"[{i}][{j}]", v)
        return _to_array(inputs, "rows")
    first_is_row = isinstance(inputs[0], list)
    for i, v in enumerate(inputs):
        if first_is_row and not isinstance(v, list):
            raise InvalidRequest(
                f"inputs is ragged: inputs[{i}] is {_describe(v)} but inputs[0] is a row; "
                "send every sample as a row of numbers"
            )
        if not first_is_row and type(v) not in _NUMBER:
            raise _not_a_number(f"[{i}]", v)
    raise AssertionError("unreachable")  # pragma: no cover
