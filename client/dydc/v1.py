"""The v1 JSON codec: a batch and its options to ``POST /v1/routines/{name}/{kind}``, and
the answer back to a :class:`~dydc.results.Result` or :class:`~dydc.results.Comparison`.

JSON carries every option of the contract (order 2, checks, bump settings, comparisons);
float64 numbers round-trip exactly (Python writes and the service reads the shortest repr).
JSON has no NaN or infinity, so non-finite numbers are refused here, named as the service
names them.

With the ``fast`` extra (orjson) arrays are written straight from their buffers and answers
parsed in C: at N = 1e6 x 2 the body took 0.45 s instead of 6.0 s with the standard
library's ``json`` here. Both write the shortest repr, so the bytes' numbers are the same.
"""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np

from dydc.batches import Batch
from dydc.calls import Call, request_id
from dydc.options import Kind, Options
from dydc.results import Comparison, Result

__all__ = ["BYTES_PER_NUMBER", "call", "document", "dumps", "expression_call", "loads", "path"]

orjson: ModuleType | None
try:
    import orjson
except ImportError:  # the standard library's json: the same numbers, slower
    orjson = None

# The longest float64 repr ("-2.2250738585072014e-308") and its separator: what a chunk's
# body can cost per number at most.
BYTES_PER_NUMBER = 26
_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


def path(routine: str, kind: Kind) -> str:
    return f"/v1/routines/{quote(routine, safe='')}/{kind.value}"


def finite(where: str, array: np.ndarray,
           why: str = "JSON carries only finite numbers") -> None:
    """ValueError naming the first non-finite entry of ``array`` (by its index after
    ``where``), if there is one."""
    bad = ~np.isfinite(array)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        index = "".join(f"[{i}]" for i in first)
        raise ValueError(f"{where}{index} is {array[first]}; {why}")


def body(batch: Batch, options: Options) -> bytes:
    return dumps(document(batch, options))


def document(batch: Batch, options: Options) -> dict[str, Any]:
    """The body as a JSON-ready document (arrays as numpy arrays)."""
    finite("inputs", batch.samples)
    params: dict[str, Any] = dict(batch.scalars)
    for name, value in batch.scalars.items():
        finite(f"params.{name}", np.asarray(value))
    for name, values in batch.per_sample.items():
        finite(f"params.{name}", values)
        params[name] = values
    doc: dict[str, Any] = {"inputs": batch.samples, "params": params}
    if options.dtype is not None:
        doc["dtype"] = options.dtype
    if options.kind is not Kind.EVALUATE:
        if options.wrt is not None:
            doc["wrt"] = list(options.wrt)
        if options.order != 1:  # sent only when asked, so that order 1 works on any service
            doc["order"] = options.order
        if options.cross:
            doc["cross"] = True
    return doc


def dumps(doc: dict[str, Any]) -> bytes:
    """JSON bytes; numpy arrays (contiguous) are written as lists."""
    if orjson is not None:
        return bytes(orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY))
    return json.dumps(doc, separators=(",", ":"), default=np.ndarray.tolist).encode()


def loads(content: bytes) -> Any:
    return orjson.loads(content) if orjson is not None else json.loads(content)


def _result(response: httpx.Response) -> Result:
    return Result.from_json(loads(response.content), request_id(response))


def _comparison(response: httpx.Response) -> Comparison:
    return Comparison.from_json(loads(response.content), request_id(response))


def expression_call(function: dict[str, Any], names: list[str], batch: Batch,
                    options: Options) -> Call[Any]:
    """``POST /v1/expressions/{kind}``: ``function`` is ``{"expression": ...}`` or
    ``{"ode": {...}}``, ``names`` the input features in column order."""
    doc = document(batch, options)
    doc = {**function, **doc, "inputs": {"names": names, "values": doc["inputs"]}}
    read = _comparison if options.kind is Kind.COMPARE else _result
    return Call("POST", f"/v1/expressions/{options.kind.value}", read, query=options.query(),
                headers=_HEADERS, parts=[dumps(doc)], timeout_s=options.timeout_s)


def call(routine: str, batch: Batch, options: Options) -> Call[Any]:
    read = _comparison if options.kind is Kind.COMPARE else _result
    return Call("POST", path(routine, options.kind), read, query=options.query(),
                headers=_HEADERS, parts=[body(batch, options)], timeout_s=options.timeout_s)
