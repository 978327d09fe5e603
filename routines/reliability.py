"""Waiting-time survival: a routine whose special function has no forward-mode formula in
PyTorch (``igammac``), so ``auto`` differentiates it in reverse mode."""

from __future__ import annotations

import torch
from torch import Tensor

from routines.registry import Param, routine

__all__ = ["gamma_survival"]


@routine(
    description=(
        "S = Q(a, lam t): probability that a Gamma(shape a, rate lam) waiting time exceeds t "
        "(regularised upper incomplete gamma)."
    ),
    params=[Param("lam", 1.0, "event rate (1/time)", bounds=(0.0, None))],
    inputs=["a", "t"],
    outputs=["S"],
)
def gamma_survival(a: Tensor, t: Tensor, *, lam: Tensor) -> Tensor:
    survival: Tensor = torch.special.gammaincc(a, lam * t)
    return survival
