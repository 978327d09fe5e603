"""Triton's binary tensor data extension: a JSON header, then the tensors' raw bytes.

The request's ``Inference-Header-Content-Length`` says where the JSON ends; each input with
``binary_data_size`` takes that many bytes of what follows, in JSON order, and the sizes must
add up to exactly what was sent. Tensors are little-endian and row-major. Anything that does
not add up is a :class:`~app.errors.MalformedFraming` (400), never a 500.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from starlette.datastructures import Headers

from app.api.v2.schemas import RequestInput
from app.errors import MalformedFraming, json_bytes

__all__ = ["HEADER_LENGTH", "encode", "header_length", "input_sections", "split"]

HEADER_LENGTH = "Inference-Header-Content-Length"


def header_length(headers: Headers) -> int | None:
    """The length of the JSON header, or None when the whole body is JSON."""
    value = headers.get(HEADER_LENGTH)
    if value is None:
        return None
    digits = value.strip()
    if not (digits.isascii() and digits.isdigit()):  # not "²", a digit to isdigit
        raise MalformedFraming(
            f"{HEADER_LENGTH} is {value!r}; send the byte length of the JSON header"
        )
    digits = digits.lstrip("0") or "0"
    if len(digits) > 18:  # no body is that long (and Python's int() refuses 4,300 digits)
        raise MalformedFraming(
            f"{HEADER_LENGTH} has {len(digits)} digits; send the byte length of the JSON header"
        )
    return int(digits)


def split(body: memoryview, length: int) -> tuple[memoryview, memoryview]:
    """The JSON header and the binary data after it."""
    if length > len(body):
        raise MalformedFraming(
            f"{HEADER_LENGTH} is {length} but the body has only {len(body)} bytes"
        )
    return body[:length], body[length:]


def _size(i: int, given: RequestInput, framed: bool) -> int | None:
    size = given.parameters.get("binary_data_size")
    if size is None:
        return None
    where = f"inputs[{i}] ({given.name})"
    if type(size) is not int or size < 0:
        raise MalformedFraming(f"{where}: binary_data_size is {size!r}; send a byte count")
    if given.data is not None:
        raise MalformedFraming(f"{where} has both data and binary_data_size; send one of them")
    if not framed:
        raise MalformedFraming(
            f"{where} has binary_data_size but the request has no {HEADER_LENGTH} header "
            "to say where the JSON ends and its bytes begin"
        )
    return size


def input_sections(inputs: Sequence[RequestInput],
                   binary: memoryview | None) -> list[memoryview | None]:
    """Each input's bytes (a view, no copy), or None for an input that carries JSON data."""
    framed = binary is not None
    available = len(binary) if binary is not None else 0
    sections: list[memoryview | None] = []
    offset = 0
    for i, given in enumerate(inputs):
        size = _size(i, given, framed)
        if size is None:
            sections.append(None)
            continue
        assert binary is not None
        if offset + size > available:
            raise MalformedFraming(
                f"the binary_data_size of inputs[0..{i}] add up to {offset + size} bytes but "
                f"only {available} bytes follow the JSON header"
            )
        sections.append(binary[offset:offset + size])
        offset += size
    if offset != available:
        raise MalformedFraming(
            f"{available} bytes follow the JSON header but the inputs' binary_data_size add "
            f"up to {offset}"
        )
    return sections


def encode(header: dict[str, Any], binaries: Sequence[np.ndarray]
           ) -> tuple[bytes, str, dict[str, str]]:
    """The response body, its media type and headers: the JSON, then the binary outputs'
    bytes in JSON order (little-endian)."""
    head = json_bytes(header)
    if not binaries:
        return head, "application/json", {}
    parts = [np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).reshape(-1).data
             for a in binaries]
    return (b"".join([head, *parts]), "application/octet-stream",
            {HEADER_LENGTH: str(len(head))})
