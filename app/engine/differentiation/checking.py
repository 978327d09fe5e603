"""Checking one answer against another: AD against bumping (``check=finite-difference``, as
Strata tests its AD), and each strategy against the reference in a comparison.

``max_abs_diff`` is the largest |a - b| over the batch; ``max_rel_diff`` divides it by the
largest |b| of the reference, so that a derivative that crosses zero somewhere in the batch
does not blow up the ratio. Where b is zero for every sample a relative difference has no
value, whatever a is: it is NaN, JSON's null, and ``max_abs_diff`` says how far a is (0 for
0 would read as a match measured, where nothing relative was).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Check", "differences"]


@dataclass(frozen=True)
class Check:
    strategy: str
    max_abs_diff: dict[str, float]
    max_rel_diff: dict[str, float]  # NaN (null) where the reference is 0 for every sample
    bump: dict[str, object]  # the bump that ran (Bump.echo)


def differences(got: Mapping[str, Tensor],
                reference: Mapping[str, Tensor]) -> tuple[dict[str, float], dict[str, float]]:
    """(max_abs_diff, max_rel_diff) per key of ``reference`` that ``got`` has too."""
    abs_diff: dict[str, float] = {}
    rel_diff: dict[str, float] = {}
    for key, ref in reference.items():
        if key not in got:
            continue
        a, b = got[key].to(torch.float64), ref.to(torch.float64)
        diff = float((a - b).abs().max()) if b.numel() else 0.0
        scale = float(b.abs().max()) if b.numel() else 0.0
        abs_diff[key] = diff
        rel_diff[key] = diff / scale if scale > 0 else math.nan
    return abs_diff, rel_diff
