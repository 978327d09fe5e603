"""A caller's inputs and parameters as one batch of N samples, ready to split into chunks.

Inputs are a numpy array of shape (N,) or (N, D), a (nested) list, or a mapping of feature
name to column (put in the routine's order). A parameter is a scalar, shared by every sample,
or N values, one per sample.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

import numpy as np

__all__ = ["Batch", "make_batch"]


@dataclass(frozen=True)
class Batch:
    samples: np.ndarray
    """(N,) or (N, D), float64 (float32 when asked for)."""
    scalars: dict[str, float]
    per_sample: dict[str, np.ndarray]
    """Parameters with one value per sample, each (N,)."""

    @property
    def n(self) -> int:
        return int(self.samples.shape[0])

    @property
    def width(self) -> int:
        """Numbers sent per sample: the features and the per-sample parameters."""
        d = 1 if self.samples.ndim == 1 else int(self.samples.shape[1])
        return d + len(self.per_sample)

    def part(self, start: int, stop: int) -> Batch:
        return Batch(self.samples[start:stop], self.scalars,
                     {k: v[start:stop] for k, v in self.per_sample.items()})


def _samples(inputs: Any, features: Sequence[str] | None, dtype: np.dtype[Any]) -> np.ndarray:
    if isinstance(inputs, Mapping):
        if features is None:
            raise ValueError("inputs given by name need the routine's feature names")
        missing = [f for f in features if f not in inputs]
        extra = [str(k) for k in inputs if k not in features]
        if missing or extra:
            raise ValueError(f"inputs have columns {', '.join(map(str, inputs)) or 'none'}; "
                             f"the routine takes {', '.join(features)}")
        columns = [_numbers(f"inputs[{f!r}]", inputs[f], dtype).reshape(-1) for f in features]
        if len({len(c) for c in columns}) > 1:
            sizes = ", ".join(f"{f}: {len(c)}" for f, c in zip(features, columns, strict=True))
            raise ValueError(f"input columns have different lengths ({sizes})")
        return columns[0] if len(columns) == 1 else np.stack(columns, axis=1)
    samples = _numbers("inputs", inputs, dtype)
    if samples.ndim not in (1, 2):
        raise ValueError(f"inputs have shape {samples.shape}; send (N,) or (N, D)")
    return samples


def _numbers(where: str, given: Any, dtype: np.dtype[Any]) -> np.ndarray:
    try:
        array = np.asarray(given)
        if array.dtype.kind not in "iuf":
            raise TypeError
        return np.ascontiguousarray(array, dtype=dtype)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be numbers (an array, or lists of the same length)") \
            from None


def make_batch(inputs: Any, params: Mapping[str, Any] | None,
               features: Sequence[str] | None = None, dtype: str | None = None) -> Batch:
    """The batch, with every check that needs no service: shapes, numbers, lengths."""
    np_dtype = np.dtype(np.float32 if dtype == "float32" else np.float64)
    samples = _samples(inputs, features, np_dtype)
    n = samples.shape[0]
    scalars: dict[str, float] = {}
    per_sample: dict[str, np.ndarray] = {}
    for name, value in (params or {}).items():
        if isinstance(value, Real) and not isinstance(value, bool):
            scalars[name] = float(value)
            continue
        array = _numbers(f"params[{name!r}]", value, np_dtype)
        if array.ndim == 0:
            scalars[name] = float(array)
        elif array.shape != (n,):
            raise ValueError(f"params[{name!r}] has shape {array.shape}; send a number or "
                             f"{n} values, one per sample")
        else:
            per_sample[name] = array
    return Batch(samples, scalars, per_sample)
