"""Closed-form routines with one parameter or two: the forum example and its cousins."""

from __future__ import annotations

import torch
from torch import Tensor

from routines.registry import Param, routine

__all__ = ["damped_oscillator", "exponential_decay", "linear"]


@routine(
    description="y = C * x, the forum example: dy/dC = x.",
    params=[Param("C", 1.0, "slope")],
    inputs=["x"],
    outputs=["y"],
)
def linear(x: Tensor, *, C: Tensor) -> Tensor:
    return C * x


@routine(
    description="y = y0 * exp(-k t): first-order decay of an initial amount y0 after time t.",
    params=[Param("k", 1.0, "decay rate constant (1/time)")],
    inputs=["y0", "t"],
    outputs=["y"],
)
def exponential_decay(y0: Tensor, t: Tensor, *, k: Tensor) -> Tensor:
    return y0 * torch.exp(-k * t)


@routine(
    description="y = exp(-gamma t) cos(omega t): a damped oscillation at time t.",
    params=[
        Param("gamma", 0.1, "damping rate (1/time)"),
        Param("omega", 1.0, "angular frequency (rad/time)"),
    ],
    inputs=["t"],
    outputs=["y"],
)
def damped_oscillator(t: Tensor, *, gamma: Tensor, omega: Tensor) -> Tensor:
    return torch.exp(-gamma * t) * torch.cos(omega * t)
