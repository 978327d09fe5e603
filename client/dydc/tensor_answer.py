"""Reading a v1 answer in tensor form (``Accept: application/vnd.dydc.tensors``): a JSON
header of ``Inference-Header-Content-Length`` bytes whose arrays of numbers are references
``{"datatype", "shape", "parameters": {"binary_data_size"}}``, then those tensors' bytes,
little-endian, in the order the references appear. The document comes back with numpy arrays
where the references were: the same numbers as the JSON answer, bit for bit, without parsing
millions of them."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np

from dydc import v1

__all__ = ["ACCEPT", "TENSORS", "loads"]

TENSORS = "application/vnd.dydc.tensors"
ACCEPT = f"{TENSORS}, application/json;q=0.5"
"""Asks for the tensor form; a service without it answers JSON, which reads the same."""
HEADER_LENGTH = "Inference-Header-Content-Length"
_DTYPES: dict[str, np.dtype[Any]] = {"FP64": np.dtype("<f8"), "FP32": np.dtype("<f4")}


def loads(response: httpx.Response) -> Any:
    """The answer's document, whichever form the service chose."""
    content = response.content
    if not response.headers.get("content-type", "").startswith(TENSORS):
        return v1.loads(content)
    length = int(response.headers[HEADER_LENGTH])
    tensors = _Tensors(content, length)
    return tensors.resolve(v1.loads(content[:length]))


class _Tensors:
    """The bytes after the header, handed out in order."""

    def __init__(self, content: bytes, offset: int) -> None:
        self.content = content
        self.offset = offset

    def take(self, reference: dict[str, Any]) -> np.ndarray:
        dtype = _DTYPES[reference["datatype"]]
        size = int(reference["parameters"]["binary_data_size"])
        if self.offset + size > len(self.content):
            raise ValueError(f"the answer ends before its tensor at byte {self.offset}")
        array = np.frombuffer(self.content, dtype=dtype, count=size // dtype.itemsize,
                              offset=self.offset).copy()  # writable, and the body can go
        self.offset += size
        return array.reshape(reference["shape"]).astype(dtype.newbyteorder("="), copy=False)

    def resolve(self, value: Any) -> Any:
        if isinstance(value, dict):
            if value.keys() == {"datatype", "shape", "parameters"}:
                return self.take(value)
            return {k: self.resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        return value
