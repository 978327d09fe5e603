"""Turning a routine of one sample into a function of a batch.

Everything downstream works on two shapes only: inputs (N, D) and outputs (N, M). Parameters
are 0-d tensors shared by the batch, or (N,) tensors holding one value per sample, so that
requests with different parameter values can share one launch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torch.func import vmap

from app.engine.errors import RoutineFailed
from routines import Routine

__all__ = ["Params", "evaluate_batch", "evaluate_sample", "param_in_dims"]

Params = Mapping[str, Tensor]


def _as_outputs(routine: Routine, out: Any, batch_shape: tuple[int, ...]) -> Tensor:
    """Coerce what a routine returned to batch_shape + (M,)."""
    m = len(routine.outputs)
    if isinstance(out, (tuple, list)):
        if len(out) != m or not all(isinstance(o, Tensor) for o in out):
            raise RoutineFailed(
                f"{routine.called} returned {len(out)} values; it declares {m} outputs"
            )
        return torch.stack(list(out), dim=-1)
    if not isinstance(out, Tensor):
        raise RoutineFailed(f"{routine.called} returned {type(out).__name__}, not a tensor")
    if out.shape == (*batch_shape, m):
        return out
    if m == 1 and out.shape == batch_shape:
        return out.unsqueeze(-1)
    raise RoutineFailed(
        f"{routine.called} returned shape {tuple(out.shape)}; expected "
        f"{(*batch_shape, m)} for its {m} outputs"
    )


def evaluate_sample(routine: Routine, x: Tensor, params: Params) -> Tensor:
    """One sample: x (D,) and 0-d params -> (M,)."""
    return _as_outputs(routine, routine.fn(*x.unbind(0), **params), ())


def param_in_dims(params: Params) -> dict[str, int | None]:
    """vmap in_dims for a params dict: per-sample (N,) params are mapped, 0-d ones shared."""
    return {k: (0 if v.dim() else None) for k, v in params.items()}


def evaluate_batch(routine: Routine, inputs: Tensor, params: Params) -> Tensor:
    """The whole batch: inputs (N, D) -> (N, M), by vmap unless the routine is vectorized."""
    if routine.vectorized:
        out = routine.fn(*inputs.unbind(1), **params)
        return _as_outputs(routine, out, (inputs.shape[0],))

    def one(x: Tensor, p: dict[str, Tensor]) -> Tensor:
        return evaluate_sample(routine, x, p)

    return vmap(one, in_dims=(0, param_in_dims(params)))(inputs, dict(params))
