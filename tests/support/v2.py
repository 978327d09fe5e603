"""The Open Inference Protocol as a client writes and reads it: JSON tensors, its errors, and
Triton's binary tensor data extension."""

from __future__ import annotations

import json

import httpx
import numpy as np

__all__ = ["HEADER", "INFER", "assert_error", "binary_input", "frame", "tensor", "unframe"]

INFER = "/v2/models/{}/infer"
HEADER = "Inference-Header-Content-Length"


def assert_error(r: httpx.Response, status: int, *needles: str) -> str:
    """``r`` is v2's ``{"error": ...}`` of ``status`` holding every needle; its message."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    assert "Traceback" not in r.text
    for needle in needles:
        assert needle in body["error"], (needle, body["error"])
    return str(body["error"])


def tensor(name: str, data: list[float], datatype: str = "FP64",
           shape: list[int] | None = None) -> dict[str, object]:
    return {"name": name, "datatype": datatype, "shape": shape or [len(data)], "data": data}


def frame(doc: dict[str, object], *arrays: np.ndarray | bytes) -> tuple[bytes, dict[str, str]]:
    """A binary request: the JSON header, then each array's bytes (little-endian)."""
    head = json.dumps(doc).encode()
    tail = b"".join(a if isinstance(a, bytes) else a.astype(a.dtype.newbyteorder("<")).tobytes()
                    for a in arrays)
    return head + tail, {HEADER: str(len(head)), "Content-Type": "application/octet-stream"}


def binary_input(name: str, a: np.ndarray, datatype: str = "FP64") -> dict[str, object]:
    return {"name": name, "datatype": datatype, "shape": list(a.shape),
            "parameters": {"binary_data_size": a.nbytes}}


def unframe(r: httpx.Response) -> tuple[dict[str, object], dict[str, np.ndarray]]:
    """The JSON header and each binary output as an array, as a client reads them."""
    length = int(r.headers[HEADER])
    doc = json.loads(r.content[:length])
    offset, arrays = length, {}
    for out in doc["outputs"]:
        size = out["parameters"]["binary_data_size"]
        dtype = {"FP64": "<f8", "FP32": "<f4"}[out["datatype"]]
        arrays[out["name"]] = np.frombuffer(r.content[offset:offset + size], dtype).reshape(
            out["shape"])
        offset += size
    assert offset == len(r.content)
    return doc, arrays
