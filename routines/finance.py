"""Option pricing."""

from __future__ import annotations

import torch
from torch import Tensor

from routines.registry import Param, routine

__all__ = ["black_scholes_call"]


@routine(
    description=(
        "European call price by Black-Scholes; dy/dsigma is vega and dy/dr is rho "
        "(textbook scale, not per percentage point)."
    ),
    params=[
        Param("sigma", 0.2, "volatility (per year, as a fraction)", bounds=(0.0, None)),
        Param("r", 0.05, "continuously compounded risk-free rate (per year)"),
    ],
    inputs=["S", "K", "T"],
    outputs=["price"],
)
def black_scholes_call(S: Tensor, K: Tensor, T: Tensor, *, sigma: Tensor, r: Tensor) -> Tensor:
    vol = sigma * T.sqrt()
    # sigma^2 T / 2 over vol written as vol / 2: sigma^2 overflows from about 1.3e154, which
    # made d2 infinite with d1 and the price S - K e^(-rT), negative; this way it tends to S
    d1 = ((S / K).log() + r * T) / vol + 0.5 * vol
    d2 = d1 - vol
    price: Tensor = S * torch.special.ndtr(d1) - K * (-r * T).exp() * torch.special.ndtr(d2)
    return price
