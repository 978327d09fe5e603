"""The v2 binary codec: Open Inference Protocol requests with Triton's binary tensor data,
both ways.

A request is a JSON header, then the tensors' bytes (little-endian, row-major, in header
order), ``Inference-Header-Content-Length`` giving the header's length. The samples go as one
tensor ``x`` of shape [N, D] (or [N]), FP64 or FP32 by dtype; a per-sample parameter as a
tensor named after it, of shape [N]; shared parameters, ``strategy``, ``wrt``, ``order`` and
``cross`` in the request's ``parameters``. Outputs come back binary: ``y``, ``dy_d<a>`` and
``d2y_d<a>_d<b>``, read back to the v1 keys (``a``, ``"a,b"``) by the routine's names.

Hand-written rather than tritonclient: that package brings gevent or aiohttp and its own
request objects, when the framing is a header and a few ``numpy.frombuffer`` calls.
"""

from __future__ import annotations

import json
from itertools import product
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np

from dydc import v1
from dydc.batches import Batch
from dydc.calls import Call, request_id
from dydc.options import Kind, Options
from dydc.results import Result, RoutineInfo

__all__ = ["HEADER_LENGTH", "call", "output_keys"]

HEADER_LENGTH = "Inference-Header-Content-Length"
VALUES = "y"
_DATATYPES = {"float64": "FP64", "float32": "FP32"}
_NUMPY: dict[str, np.dtype[Any]] = {"FP64": np.dtype("<f8"), "FP32": np.dtype("<f4")}


def output_keys(info: RoutineInfo) -> dict[str, tuple[int, str]]:
    """Output tensor name -> (order, the v1 key): ``dy_dS`` -> (1, "S"),
    ``d2y_dS_dsigma`` -> (2, "S,sigma")."""
    names = [*info.param_names, *info.inputs]
    keys = {f"dy_d{a}": (1, a) for a in names}
    keys |= {f"d2y_d{a}_d{b}": (2, f"{a},{b}") for a, b in product(names, names)}
    return keys


def _tensor(name: str, array: np.ndarray, datatype: str) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": list(array.shape),
            "parameters": {"binary_data_size": array.nbytes}}


def _parameters(batch: Batch, options: Options) -> dict[str, Any]:
    parameters: dict[str, Any] = dict(batch.scalars)
    for name, value in batch.scalars.items():  # the header is JSON, as a v1 body is
        v1.finite(f"params.{name}", np.asarray(value))
    parameters["binary_data_output"] = True
    if options.kind is Kind.SENSITIVITIES:
        parameters["strategy"] = options.strategy
        if options.wrt is not None:
            parameters["wrt"] = ",".join(options.wrt)
        if options.order != 1:
            parameters["order"] = options.order
        if options.cross:
            parameters["cross"] = True
    if options.timeout_ms is not None:
        parameters["timeout"] = options.timeout_ms * 1e3  # Triton's, in microseconds
    return parameters


def call(info: RoutineInfo, batch: Batch, options: Options) -> Call[Result]:
    datatype = _DATATYPES.get(options.dtype or "float64")
    if datatype is None:
        raise ValueError(f"dtype {options.dtype!r}; use float64 or float32")
    wire = _NUMPY[datatype]
    arrays = [("x", batch.samples), *batch.per_sample.items()]
    arrays = [(name, np.ascontiguousarray(a, dtype=wire)) for name, a in arrays]
    header: dict[str, Any] = {
        "inputs": [_tensor(name, a, datatype) for name, a in arrays],
        "parameters": _parameters(batch, options),
    }
    if options.kind is Kind.EVALUATE:
        header["outputs"] = [{"name": VALUES, "parameters": {"binary_data": True}}]
    head = json.dumps(header, separators=(",", ":")).encode()
    keys = output_keys(info)

    def read(response: httpx.Response) -> Result:
        return _result(response, keys, batch, info)

    return Call("POST", f"/v2/models/{quote(info.name, safe='')}/infer", read,
                headers={"Content-Type": "application/octet-stream",
                         HEADER_LENGTH: str(len(head))},
                parts=[head, *(a.data for _, a in arrays)], timeout_s=options.timeout_s)


def _outputs(response: httpx.Response) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The response header and its output tensors by name."""
    content = response.content
    length = response.headers.get(HEADER_LENGTH)
    header = json.loads(content if length is None else content[:int(length)])
    offset = len(content) if length is None else int(length)
    tensors: dict[str, np.ndarray] = {}
    for output in header.get("outputs", []):
        dtype = _NUMPY[output["datatype"]]
        shape = output["shape"]
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is None:
            array = np.asarray(output["data"], dtype=dtype)
        else:
            array = np.frombuffer(content, dtype=dtype, count=size // dtype.itemsize,
                                  offset=offset).copy()  # writable, and the body can go
            offset += size
        tensors[output["name"]] = array.reshape(shape).astype(dtype.newbyteorder("="),
                                                              copy=False)
    return header, tensors


def _result(response: httpx.Response, keys: dict[str, tuple[int, str]], batch: Batch,
            info: RoutineInfo) -> Result:
    header, tensors = _outputs(response)
    values = tensors.pop(VALUES)
    first: dict[str, np.ndarray] = {}
    second: dict[str, np.ndarray] = {}
    for name, array in tensors.items():
        order, key = keys.get(name, (1, name))
        (second if order == 2 else first)[key] = array
    parameters = header.get("parameters") or {}
    return Result(routine=header.get("model_name", info.name), values=values,
                  derivatives=first, second_derivatives=second,
                  strategy=parameters.get("strategy"),
                  dtype="float32" if values.dtype == np.float32 else "float64",
                  device=parameters.get("device", ""), n=int(values.shape[0]),
                  params=_params(info, batch), outputs=list(info.outputs),
                  request_id=request_id(response), protocol="binary")


def _params(info: RoutineInfo, batch: Batch) -> dict[str, Any]:
    """The parameters as v1's answer echoes them (v2's does not): every one of the routine's
    in its order, defaults filled in, a per-sample one as the list JSON would have carried."""
    sent: dict[str, Any] = dict(batch.scalars)
    for name, values in batch.per_sample.items():
        # float32 as JSON writes it (its shortest repr), not widened to float64's digits
        sent[name] = (values.tolist() if values.dtype == np.float64
                      else v1.loads(v1.dumps({"v": values}))["v"])
    return {**{p.name: sent.pop(p.name, p.default) for p in info.params}, **sent}
