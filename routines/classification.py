"""A routine with several outputs per sample."""

from __future__ import annotations

import torch
from torch import Tensor

from routines.registry import Param, routine

__all__ = ["softmax"]


@routine(
    description="p = softmax(z / T) over a sample's three scores: M = 3 outputs, temperature T.",
    params=[Param("T", 1.0, "temperature", bounds=(0.0, None))],
    inputs=["z1", "z2", "z3"],
    outputs=["p1", "p2", "p3"],
)
def softmax(z1: Tensor, z2: Tensor, z3: Tensor, *, T: Tensor) -> Tensor:
    return torch.softmax(torch.stack([z1, z2, z3]) / T, dim=0)
