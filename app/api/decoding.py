"""Reading v1 JSON request bodies: a size limit before the body is read in full, strict JSON,
and inputs turned into one float64 array with errors that point at the offending element."""

from __future__ import annotations

import json
from itertools import chain
from typing import Any

import numpy as np
import orjson
from starlette.requests import Request

from app.engine.errors import InvalidRequest
from app.errors import BodyTooLarge, MalformedBody

__all__ = ["decode_inputs", "read_json"]

_NUMBER = (int, float)


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(
            f"request body is {int(declared)} bytes; the limit is {limit} (DYDC_MAX_BODY_BYTES): "
            "split the batch"
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(
                f"request body is over the limit of {limit} bytes (DYDC_MAX_BODY_BYTES): "
                "split the batch"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(body: bytes) -> Any:
    if not body.strip():
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


async def read_json(request: Request, limit: int) -> Any:
    return parse_json(await read_body(request, limit))


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
    """A flat list of N numbers -> (N,); a list of N rows of D numbers -> (N, D)."""
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
