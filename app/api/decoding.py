"""v1 request bodies: strict JSON, a count of the samples before anything is parsed, and
inputs turned into one float64 array with errors that point at the offending element.

An ``inputs`` array of numbers, flat or rows, takes a fast path: it is found in the raw bytes,
checked there to hold nothing but numbers and brackets, parsed alone and turned into an array
in one call, skipping the per-element type scan; anything unusual falls back to the general
path, so every error message stays the same. (Parsing the numbers with
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
    "SampleCounter",
    "check_unique_keys",
    "decode_inputs",
    "parse_document",
    "parse_json",
]

_NUMBER = (int, float)


def parse_json(body: bytes) -> Any:
    """A JSON body, refused (MalformedBody) when it is not JSON or an object in it has a key
    twice."""
    if not body or body.isspace():
        raise MalformedBody("request body is empty; send a JSON object")
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as strict_error:
        # Python clients write NaN and Infinity by default: accept them here, so that the
        # engine can say which element is not finite, rather than call the JSON malformed.
        try:
            return json.loads(body, object_pairs_hook=_unique_object)
        except (ValueError, RecursionError):  # (a key twice is a MalformedBody: raised)
            raise MalformedBody(_not_json(body, strict_error)) from None
    check_unique_keys(body, document)
    return document


def _not_json(body: bytes, error: Exception) -> str:
    """Why ``body`` is not JSON: bytes that are not UTF-8 named by their offset (orjson says
    "str is not valid UTF-8: surrogates not allowed ... column 1"), else orjson's own words."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        compressed = " (it looks gzip-compressed: say so with Content-Encoding: gzip)" \
            if body.startswith(b"\x1f\x8b") else ""
        return (f"request body is not UTF-8: byte {body[exc.start]:#04x} at offset {exc.start} "
                f"is not valid there{compressed}; send JSON encoded as UTF-8")
    return f"request body is not valid JSON: {error}"


# -- duplicate keys ----------------------------------------------------------------------------
#
# orjson keeps the last of a key given twice ({"C": 1, "C": 5} is {"C": 5}) and cannot be told
# otherwise, and parsing again with a hook costs 3-10x the parse. So the keys are counted
# instead: every key in the text is followed by a colon outside strings, so a document whose
# parsed objects hold as many keys as the text has such colons has no key twice. The colons
# are found with bytes.find (memchr), which skips the long arrays of numbers at memory speed;
# anything the count cannot settle (colons inside strings, deep nesting) is parsed again with
# the hook, which names the key.

_WHITESPACE = b" \t\r\n"
_DEEPEST = 64  # objects nested deeper are not counted (the hook then decides)


def _duplicate(key: str) -> MalformedBody:
    return MalformedBody(
        f"the JSON body has the key {json.dumps(key)} twice in one object; send each key "
        "once (JSON parsers keep one of them silently, so the request is ambiguous)"
    )


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _duplicate(key)
            seen.add(key)
    return document


def _keys(value: Any, depth: int = 0) -> int:
    """Keys of the objects in ``value``, or fewer: arrays are walked only when they start
    with an object (never the long arrays of numbers), and nothing below ``_DEEPEST``."""
    if depth > _DEEPEST:
        return 0
    if isinstance(value, dict):
        return len(value) + sum(_keys(v, depth + 1) for v in value.values()
                                if isinstance(v, (dict, list)))
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return sum(_keys(v, depth + 1) for v in value if isinstance(v, (dict, list)))
    return 0


def _separators(text: bytes, at_most: int) -> int:
    """The colons of ``text`` that follow a closing quote (and whitespace): every key's
    colon, and, rarely, a colon inside a string; more than ``at_most`` as soon as that is
    known. A colon inside a string after an escaped quote is not counted."""
    count = 0
    i = text.find(b":")
    while i >= 0:
        j = i - 1
        while j >= 0 and text[j] in _WHITESPACE:
            j -= 1
        if j >= 0 and text[j] == 0x22:  # '"', unescaped if an even run of backslashes ends there
            k = j - 1
            while k >= 0 and text[k] == 0x5C:
                k -= 1
            if (j - k) % 2:
                count += 1
                if count > at_most:
                    break
        i = text.find(b":", i + 1)
    return count


def check_unique_keys(text: bytes, document: Any) -> None:
    """MalformedBody naming the key if an object of ``document`` (parsed from ``text`` by a
    parser that keeps the last of a repeated key) has a key twice."""
    keys = _keys(document)
    if _separators(text, keys) == keys:
        return  # separators >= keys in the text >= keys parsed >= keys counted: all equal
    try:
        json.loads(text, object_pairs_hook=_unique_object)
    except RecursionError:
        raise MalformedBody("request body nests objects too deeply; flatten it") from None


# The key, the colon and the opening bracket of an "inputs" array.
_INPUTS_ARRAY = re.compile(rb'"inputs"\s*:\s*\[\s*')
# The end of a list of rows: a row's closing bracket, then the list's.
_ROWS_END = re.compile(rb"\]\s*\]")
# The first byte of every JSON value that is not a number (and of NaN, Infinity).
_NOT_NUMBERS = tuple(bytes([c]) for c in b'{"tfnNI')


def _parse_with_numeric_inputs(body: bytes) -> dict[str, Any] | None:
    """The document with ``inputs`` already a float64 array, when ``inputs`` is a list of
    JSON numbers or a list of equally long rows of them; None whenever anything is unusual
    (the general path then decides)."""
    key = body.find(b'"inputs"')
    match = _INPUTS_ARRAY.match(body, key) if key >= 0 else None
    if match is None:
        return None
    start = body.rfind(b"[", key, match.end())
    rows = body.startswith(b"[", match.end())
    if rows:
        found = _ROWS_END.search(body, match.end())
        end = found.end() - 1 if found is not None else -1
    else:
        end = body.find(b"]", start)
    if end < 0 or body.find(b'"inputs"', end) >= 0:
        return None
    if any(body.find(marker, start + 1, end) >= 0 for marker in _NOT_NUMBERS) or (
            not rows and body.find(b"[", start + 1, end) >= 0):
        return None
    rest = body[:start] + b"0" + body[end + 1:]
    if b"\\" in rest:  # without escapes, the one literal "inputs" is the one key of that name
        return None
    try:
        numbers = orjson.loads(memoryview(body)[start:end + 1])
        doc = orjson.loads(rest)
        inputs = _rows_array(numbers) if rows else np.array(numbers, dtype=np.float64)
    except (orjson.JSONDecodeError, OverflowError, ValueError, TypeError):
        return None
    if inputs is None or not isinstance(doc, dict) or type(doc.get("inputs")) is not int:
        return None
    check_unique_keys(rest, doc)
    doc["inputs"] = inputs
    return doc


def _rows_array(rows: list[Any]) -> np.ndarray | None:
    """Rows of numbers (the bytes held nothing else but brackets) as an (N, D) array laid out
    as columns (see :func:`_to_array`), or None if they are ragged or nested deeper. One flat
    list made into an array is 2-3x faster than numpy walking the rows (1e6 x 2 here: 110
    against 195 ms), and needs no per-element type scan."""
    if set(map(type, rows)) != {list}:
        return None
    widths = set(map(len, rows))
    if len(widths) != 1 or 0 in widths:
        return None
    flat = np.array(list(chain.from_iterable(rows)), dtype=np.float64)  # nested: ValueError
    return np.ascontiguousarray(flat.reshape(len(rows), -1).T).T


class SampleCounter:
    """The number of samples in a v1 body's ``inputs``, counted in the raw bytes as they
    arrive, without joining or parsing them: exact when ``inputs`` is a flat list of numbers
    or a list of rows of numbers (spaced or pretty-printed alike), None when the end of
    ``inputs`` is not found (the parse then decides).

    Fed chunk by chunk, a body with too many samples is known to be so after the bytes that
    prove it, each chunk scanned once while it is in cache, so the event loop is held for
    microseconds at a time instead of for a scan of the whole body (about 100 ms per 60 MiB).
    A body whose inputs hold strings or objects is invalid anyway: if its separators
    outnumber the limit it is refused as too large instead of malformed.
    """

    # Bytes searched for the start of the ``inputs`` array before giving up.
    HEAD_LIMIT = 1 << 20

    def __init__(self) -> None:
        self._head = bytearray()  # the bytes before the array, while it is looked for
        self._opened = False  # its opening bracket was seen
        self._rows: bool | None = None  # None until its first value is seen
        self._closing = False  # the previous chunk ended in "]" and spaces at most
        self._count = 0
        self.done = False  # the end of inputs was found: the count is exact
        self.gave_up = False

    @property
    def at_least(self) -> int:
        """A lower bound of the count so far (the count itself once :attr:`done`)."""
        return self._count + (1 if self._rows is False and not self.done else 0)

    def result(self) -> int | None:
        """After the last chunk: the count, or None."""
        if self.done:
            return self._count
        return 0 if self._opened and self._rows is None and not self.gave_up else None

    def feed(self, chunk: bytes | bytearray) -> None:
        if self.done or self.gave_up or not chunk:
            return
        if self._rows is None:
            self._head += chunk
            first = self._first_value()
            if first is None:
                if len(self._head) > self.HEAD_LIMIT:
                    self.gave_up = True
                if self.gave_up:
                    self._head = bytearray()
                return
            chunk, self._head = self._head[first:], bytearray()
            if self.done:
                return
        self._scan(chunk)

    def _first_value(self) -> int | None:
        """The offset in the head of the first value of ``inputs``; None while more bytes
        are needed (or never: :attr:`gave_up`)."""
        head = self._head
        i = head.find(b'"inputs"')
        if i < 0:
            return None
        i += len(b'"inputs"')
        for expected in b":[":
            i = _skip_space(head, i)
            if i == len(head):
                return None
            if head[i] != expected:
                self.gave_up = True
                return None
            i += 1
        self._opened = True
        i = _skip_space(head, i)
        if i == len(head):
            return None
        if head[i] == ord("]"):
            self.done = True
        else:
            self._rows = head[i] == ord("[")
        return i

    def _scan(self, chunk: bytes | bytearray) -> None:
        if self._rows:
            if self._closing:  # the last chunk ended in a row's "]" (and spaces): is it the end?
                j = _skip_space(chunk, 0)
                if j == len(chunk):
                    return
                if chunk[j] == ord("]"):
                    self.done = True
                    return
            # the rows end at "]" and "]" with nothing but space between (pretty-printed JSON
            # puts a line break there: counted on, the rows of later lists made a valid body
            # of N samples a 413)
            found = _ROWS_END.search(chunk)
            if found is not None:
                self._count += chunk.count(b"[", 0, found.start())
                self.done = True
                return
            self._count += chunk.count(b"[")
            self._closing = _ends_in_close(chunk)
        else:
            end = chunk.find(b"]")
            if end >= 0:
                self._count += chunk.count(b",", 0, end) + 1
                self.done = True
                return
            self._count += chunk.count(b",")


def _ends_in_close(data: bytes | bytearray) -> bool:
    """Whether ``data`` ends in "]" and spaces at most (read from the end: no copy)."""
    i = len(data) - 1
    while i >= 0 and data[i] in b" \t\r\n":
        i -= 1
    return i >= 0 and data[i] == ord("]")


def _skip_space(data: bytes | bytearray, i: int) -> int:
    while i < len(data) and data[i] in b" \t\r\n":
        i += 1
    return i


# Bodies from this size try the fast path: below it, its byte scans and second parse cost
# more than the type scan they spare (16 numbers: 9.7 us against 6.3 us in all; 64 rows of 3:
# 34 against 39 us; measured in process).
_FAST_PATH_BYTES = 1024


def parse_document(body: bytes) -> Any:
    """A v1 request body: JSON, with ``inputs`` already a float64 array when the fast path
    applies (:func:`decode_inputs` accepts both)."""
    fast = _parse_with_numeric_inputs(body) if len(body) >= _FAST_PATH_BYTES else None
    return fast if fast is not None else parse_json(body)


def _describe(v: Any) -> str:
    text = json.dumps(v) if isinstance(v, (str, bool)) or v is None else type(v).__name__
    return "null" if v is None else text


def _not_a_number(where: str, v: Any) -> InvalidRequest:
    return InvalidRequest(f"inputs{where} is {_describe(v)}; inputs must be numbers")


def _to_array(values: list[Any], shape_hint: str) -> np.ndarray:
    """Rows are laid out as columns in memory (Fortran order, at no extra cost to build): a
    routine reads its inputs feature by feature, and a compiled graph takes them as columns
    (D, N) contiguous, which is then a view of this array instead of a copy of every input
    (2.5 ms for 1e6 x 2 here)."""
    try:
        return np.array(values, dtype=np.float64, order="F")
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
