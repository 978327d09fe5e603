"""Option pricing."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from routines.registry import Param, routine

__all__ = ["black_scholes_call", "normal_cdf"]

_SQRT1_2 = 1 / math.sqrt(2)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)


def normal_cdf(x: Tensor) -> Tensor:
    """The standard normal distribution function, as erfc(-x / sqrt 2) / 2: accurate to the
    last digits in the lower tail, where torch.special.ndtr is not (2% off at -8, 0 below
    about -8.3, in float64; 0 below -5.5 in float32), which gave deep out-of-the-money calls
    negative prices and deltas."""
    cdf: Tensor = 0.5 * torch.special.erfc(-x * _SQRT1_2)
    return cdf


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
    strike = K * (-r * T).exp()
    # sigma = 0 (within its bounds) or T = 0: no spread, and the formula's 0/0 would put NaN
    # in its derivatives. There the price is the discounted intrinsic value, and the
    # derivatives are the formula's limits as sigma sqrt(T) -> 0+: the intrinsic value's
    # away from the forward; at the money forward (S = K e^(-rT)) delta 1/2, rho and dy/dK
    # half the intrinsic value's, vega S sqrt(T) / sqrt(2 pi) (the price grows as
    # S sigma sqrt(T) / sqrt(2 pi) there). One limit is not given: at T = 0 at the money
    # with sigma > 0, dy/dT is unbounded (the time value grows as sqrt(T)); the answer is
    # the intrinsic value's half, r K / 2 (forward mode would carry sqrt's infinite slope
    # at 0 into every derivative as NaN).
    # Each branch runs on values where it is finite (T and sigma of 1 elsewhere): an
    # infinity in the branch not taken reaches the derivatives as NaN in reverse mode.
    # (a negative T, whatever sigma, goes to the formula, whose NaN refuses it)
    lasting = T > 0
    live = ((sigma != 0) & lasting) | (T < 0)
    root_t = torch.where(T != 0, T, 1.0).sqrt()  # sqrt(T), but no infinite slope at 0
    vol = torch.where(live, sigma, 1.0) * root_t
    # sigma^2 T / 2 over vol written as vol / 2: sigma^2 overflows from about 1.3e154, which
    # made d2 infinite with d1 and the price S - K e^(-rT), negative; this way it tends to S
    d1 = ((S / K).log() + r * T) / vol + 0.5 * vol
    d2 = d1 - vol
    formula = S * normal_cdf(d1) - strike * normal_cdf(d2)
    intrinsic = S - strike
    # (sigma times a number first: one number for all samples where sigma is shared)
    spread = (sigma * _INV_SQRT_2PI) * S * root_t
    at_forward = 0.5 * intrinsic + torch.where(lasting, spread, 0.0)
    flat = torch.where(intrinsic == 0, at_forward, intrinsic.clamp(min=0))
    price: Tensor = torch.where(live, formula, flat)
    return price
