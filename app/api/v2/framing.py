"""Triton's binary tensor data extension: a JSON header, then the tensors' raw bytes.

The request's ``Inference-Header-Content-Length`` says where the JSON ends; each input with
``binary_data_size`` takes that many bytes of what follows, in JSON order, and the sizes must
add up to exactly what was sent. Tensors are little-endian and row-major. Anything that does
not add up is a :class:`~app.errors.MalformedFraming` (400), never a 500.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
from starlette.datastructures import Headers

from app.api.v2.schemas import RequestInput
from app.errors import MalformedFraming, json_bytes

__all__ = ["HEADER_LENGTH", "encode", "header_length", "input_sections", "not_json", "split"]

HEADER_LENGTH = "Inference-Header-Content-Length"


def header_length(headers: Headers) -> int | None:
    """The length of the JSON header, or None when the whole body is JSON."""
    values = headers.getlist(HEADER_LENGTH)
    if not values:
        return None
    if len(values) > 1:  # which one would win is no answer (h11 refuses two Content-Length)
        shown = ", ".join(json.dumps(v[:24]) for v in values[:4])
        raise MalformedFraming(
            f"the request has {len(values)} {HEADER_LENGTH} headers ({shown}"
            f"{', ...' if len(values) > 4 else ''}); send one, the byte length of the JSON "
            "header")
    value = values[0]
    digits = value.strip()
    if not (digits.isascii() and digits.isdigit()):  # not "²", a digit to isdigit
        raise MalformedFraming(
            f"{HEADER_LENGTH} is {json.dumps(value[:24])}{'...' if len(value) > 24 else ''}; "
            "send the byte length of the JSON header")
    digits = digits.lstrip("0") or "0"
    if len(digits) > 18:  # no body is that long (and Python's int() refuses 4,300 digits)
        raise MalformedFraming(
            f"{HEADER_LENGTH} has {len(digits)} digits; send the byte length of the JSON header"
        )
    return int(digits)


def split(body: memoryview, length: int) -> tuple[memoryview, memoryview]:
    """The JSON header and the binary data after it."""
    if length == 0:  # (it had been "request body is empty", of a body that is not)
        raise MalformedFraming(
            f"{HEADER_LENGTH} is 0, but the JSON header cannot be empty; send its byte length"
            f"{_json_length_hint(bytes(body[:_DIAGNOSED_BYTES]))}")
    if length > len(body):
        raise MalformedFraming(
            f"{HEADER_LENGTH} is {length} but the body has only {len(body)} bytes"
        )
    return body[:length], body[length:]


# -- a body that is not JSON where the framing says JSON is: what the framing has to do with it
#
# Only on the error path, and only over the body's first _DIAGNOSED_BYTES: a binary request's
# JSON header is a few hundred bytes a tensor, and parsing a whole 48 MB body again (Python's
# json, to find where an object ends) held the event loop for seconds.

_DIAGNOSED_BYTES = 1 << 16


def _json_object(body: bytes) -> tuple[dict[str, Any], int] | None:
    """The JSON object the body starts with and its byte length, when one does within its
    first _DIAGNOSED_BYTES, else None."""
    body = body[:_DIAGNOSED_BYTES]
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:  # binary tensor data after the JSON, as a rule
        text = body[:exc.start].decode("utf-8")
    start = len(text) - len(text.lstrip())
    try:
        document, end = json.JSONDecoder().raw_decode(text, start)
    except (ValueError, RecursionError):
        return None
    length = len(text[:end].encode("utf-8"))
    return (document, length) if isinstance(document, dict) else None


def _json_length_hint(body: bytes) -> str:
    found = _json_object(body)
    return "" if found is None else (
        f" (the body starts with a JSON object of {found[1]} bytes: "
        f"{HEADER_LENGTH}: {found[1]})")


def _has_binary_inputs(document: dict[str, Any]) -> bool:
    inputs = document.get("inputs")
    return isinstance(inputs, list) and any(
        isinstance(given, dict) and isinstance(given.get("parameters"), dict)
        and "binary_data_size" in given["parameters"] for given in inputs)


def _is_text(data: bytes) -> bool:
    """Whether ``data`` reads as UTF-8, by its first _DIAGNOSED_BYTES (a character cut at
    their end counts as text)."""
    try:
        data[:_DIAGNOSED_BYTES].decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.reason == "unexpected end of data"
    return True


_NOT_JSON = ("request body is not valid JSON: ", "request body is not UTF-8: ")


def not_json(header: bytes, binary: memoryview | None, said: str) -> MalformedFraming | None:
    """For a body whose JSON (``header``; with ``binary``, the part
    Inference-Header-Content-Length delimits) was refused as not JSON (``said``, the
    refusal's words), the refusal in the framing's terms, or None when the framing does not
    explain it (the JSON is fine: it has a key twice, say). Either the header length cuts the
    JSON short or past its end, or, with no header length, binary tensor data follows the
    JSON."""
    if not said.startswith(_NOT_JSON):
        return None
    reason = said.removeprefix(_NOT_JSON[0]).removeprefix(_NOT_JSON[1]).split(";")[0]
    if binary is not None:
        found = _json_object(header[:_DIAGNOSED_BYTES] + bytes(binary[:_DIAGNOSED_BYTES]))
        if found is None:  # no JSON object at the start: the JSON's own fault, in its words
            return None
        return MalformedFraming(
            f"the JSON header, the first {len(header)} bytes of the body as {HEADER_LENGTH} "
            f"says, is not valid JSON ({reason}): the body starts with a JSON object of "
            f"{found[1]} bytes; send {HEADER_LENGTH}: {found[1]}")
    found = _json_object(header)
    if found is None:
        return None
    document, length = found
    tail = header[length:]
    if not tail:
        return None
    sized = _has_binary_inputs(document)
    if not (sized or not _is_text(tail)):  # (another JSON document?)
        return None
    sizes = "" if sized else (", and give each input whose bytes they are its "
                              "parameters.binary_data_size")
    return MalformedFraming(
        f"the body is a JSON object of {length} bytes followed by {len(tail)} bytes that look "
        f"like binary tensor data; send the header {HEADER_LENGTH}: {length} to say where the "
        f"JSON ends and the tensors' bytes begin{sizes}")


def _size(i: int, given: RequestInput, framed: bool) -> int | None:
    size = given.parameters.get("binary_data_size")
    if size is None:
        return None
    where = f"inputs[{i}] ({given.name})"
    if type(size) is not int or size < 0:
        raise MalformedFraming(f"{where}: binary_data_size is {json.dumps(size)}; send a byte "
                               "count")
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
