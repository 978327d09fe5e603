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
    # At x = lam t = 0 (t = 0, or the bound lam = 0) Q is 1, but igammac's derivative in x,
    # -x^(a-1) e^(-x) / Gamma(a), is NaN there at a = 1 (0^0 as exp(0 log 0)) and -inf for
    # a < 1, which the chain rule multiplies by t = 0 into NaN where dQ/dlam is 0. There Q
    # is taken from its series, as lam^a t^a (not (lam t)^a, whose chain rule makes the same
    # NaN): the value 1 and the limits of the first and second derivatives (dQ/dlam = -t
    # and d2Q/dlam2 = t^2 at lam = 0 and a = 1; -inf, refused, at a < 1). Each branch sees
    # only its own samples' numbers, so neither one's NaN reaches the other's.
    x = lam * t
    zero = (x == 0) & (a > 0)  # (a <= 0 is no Gamma distribution: igammac's NaN stands)
    far = torch.special.gammaincc(a, torch.where(zero, 1.0, x))
    lam0, t0 = torch.where(zero, lam, 1.0), torch.where(zero, t, 1.0)
    # two terms, 1 - x^a / Gamma(a + 1) + x^(a + 1) / (Gamma(a) (a + 1)): the second one's
    # second derivatives at x = 0 are not 0 at a = 1 (d2Q/dlam2 = t^2 at lam = 0)
    near = 1 - lam0**a * t0**a * torch.exp(-torch.lgamma(a + 1)) * (1 - a * lam0 * t0 / (a + 1))
    survival: Tensor = torch.where(zero, near, far)
    return survival
