"""Reading request bodies: a size limit before the body is read in full, strict JSON, and v1
inputs turned into one float64 array with errors that point at the offending element.

A large flat ``inputs`` array takes a fast path: it is found in the raw bytes, parsed alone and
turned into an array in one call, skipping the per-element type scan; anything unusual falls
back to the general path, so every error message stays the same. (Parsing the numbers with
numpy's own text parsers was measured and is 3-4x *slower* than orjson: see bench/bench_wire.py.)
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from itertools import chain
from typing import Any

import numpy as np
import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.types import Receive

from app.engine.errors import InvalidRequest
from app.errors import BodyTooLarge, MalformedBody

__all__ = [
    "check_declared_length",
    "decode_inputs",
    "parse_document",
    "parse_json",
    "read_body",
    "read_buffer",
    "receive_body",
]

_NUMBER = (int, float)


def _over_limit(limit: int) -> BodyTooLarge:
    """A body without Content-Length that turned out too large, as it streamed in."""
    return BodyTooLarge(
        f"request body is over the limit of {limit} bytes (DYDC_MAX_BODY_BYTES): "
        "split the batch"
    )


def check_declared_length(declared: str | None, limit: int) -> int | None:
    """The Content-Length header as a number (None if absent or not a number); BodyTooLarge
    when it is over ``limit``, before a byte of the body is read."""
    if declared is None or not declared.isdigit():
        return None
    if int(declared) > limit:
        raise BodyTooLarge(
            f"request body is {int(declared)} bytes; the limit is {limit} (DYDC_MAX_BODY_BYTES): "
            "split the batch"
        )
    return int(declared)


def _declared_length(request: Request, limit: int) -> int | None:
    return check_declared_length(request.headers.get("content-length"), limit)


async def _chunks(request: Request, limit: int) -> AsyncIterator[bytes]:
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _over_limit(limit)
        yield chunk


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body; BodyTooLarge as soon as it is known to be over ``limit`` bytes."""
    _declared_length(request, limit)
    return b"".join([chunk async for chunk in _chunks(request, limit)])


async def receive_body(receive: Receive, limit: int) -> bytes:
    """:func:`read_body` for a bare ASGI ``receive`` (the caller checks Content-Length with
    :func:`check_declared_length`). ClientDisconnect, as Starlette raises it, if the client
    goes away before the body is complete."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientDisconnect
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _over_limit(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


_ALIGNMENT = 64


def _aligned(size: int, aligned_at: int) -> memoryview:
    raw = bytearray(size + _ALIGNMENT)
    address = np.frombuffer(raw, dtype=np.uint8).ctypes.data
    pad = -(address + aligned_at) % _ALIGNMENT
    return memoryview(raw)[pad:pad + size]


async def read_buffer(request: Request, limit: int, *, aligned_at: int = 0) -> memoryview:
    """The whole body in one writable buffer, placed so that byte ``aligned_at`` of the body
    starts on a 64-byte boundary: arrays viewed from there need neither a copy nor a
    read-only warning. Same limit as :func:`read_body`."""
    declared = _declared_length(request, limit)
    if declared is None:  # chunked: gather, then copy once
        body = b"".join([chunk async for chunk in _chunks(request, limit)])
        buffer = _aligned(len(body), aligned_at)
        buffer[:] = body
        return buffer
    buffer = _aligned(declared, aligned_at)
    filled = 0
    async for chunk in _chunks(request, limit):
        if filled + len(chunk) > declared:  # the server enforces Content-Length; be safe
            raise MalformedBody(f"request body is longer than its Content-Length ({declared})")
        buffer[filled:filled + len(chunk)] = chunk
        filled += len(chunk)
    return buffer[:filled]


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
