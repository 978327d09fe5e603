"""The routines' closed forms, written once, in float64: first and second derivatives by hand,
the normal CDF from ``math.erfc``, the incomplete gamma function from mpmath (which torch
depends on through sympy). Independent of the routines they check.

Scalar functions (``black_scholes_greeks``, ``exponential_decay``, ...) are the source; the
array forms (:func:`black_scholes` for numpy, :data:`CLOSED_FORMS` for torch batches) apply
them sample by sample."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mpmath
import numpy as np
import torch
from torch import Tensor

__all__ = ["CLOSED_FORMS", "HULL", "ClosedForm", "Exact", "black_scholes",
           "black_scholes_greeks", "damped_oscillator", "exponential_decay", "logistic_growth",
           "ncdf", "npdf", "options"]

# Hull's example: S = 49, K = 50, r = 0.05, T = 20 weeks, sigma = 0.2
HULL = {"S": 49.0, "K": 50.0, "T": 0.3846, "sigma": 0.2, "r": 0.05}


def ncdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


def npdf(x: float) -> float:
    return math.exp(-x * x / 2) / math.sqrt(2 * math.pi)


def black_scholes_greeks(S: float, K: float, T: float, sigma: float,
                         r: float) -> dict[str, float]:
    """A European call's price and its derivatives (Hull), keyed as the service keys them;
    vega and rho at textbook scale (per unit, not per percentage point)."""
    sq = math.sqrt(T)
    d1 = (math.log(S / K) + (r + sigma**2 / 2) * T) / (sigma * sq)
    d2 = d1 - sigma * sq
    vega = S * npdf(d1) * sq
    return {
        "price": S * ncdf(d1) - K * math.exp(-r * T) * ncdf(d2),
        "S": ncdf(d1),                                   # delta
        "sigma": vega,                                   # vega
        "r": K * T * math.exp(-r * T) * ncdf(d2),        # rho
        "S,S": npdf(d1) / (S * sigma * sq),              # gamma
        "S,sigma": -npdf(d1) * d2 / sigma,               # vanna
        "sigma,sigma": vega * d1 * d2 / sigma,           # volga
    }


def exponential_decay(y0: float, t: float, k: float) -> dict[str, float]:
    y = y0 * math.exp(-k * t)
    return {"y": y, "k": -t * y, "y0": math.exp(-k * t), "t": -k * y,
            "k,k": t * t * y, "k,y0": -t * math.exp(-k * t), "y0,y0": 0.0}


def logistic_growth(N0: float, t: float, r: float, K: float) -> dict[str, float]:
    """N = K / D, D = 1 + A E, A = (K - N0) / N0, E = exp(-r t)."""
    E = math.exp(-r * t)
    A = (K - N0) / N0
    D = 1 + A * E
    return {
        "y": K / D,
        "r": K * A * t * E / D**2,
        "K": (1 - E) / D**2,
        "r,r": K * A * t * t * E * (A * E - 1) / D**3,
        "K,K": -2 * (1 - E) * (E / N0) / D**3,
        "r,K": t * E / D**2 + 2 * A * t * E * (1 - E) / D**3,
    }


def damped_oscillator(t: float, gamma: float, omega: float) -> dict[str, float]:
    decay = math.exp(-gamma * t)
    y = decay * math.cos(omega * t)
    return {"y": y, "gamma": -t * y, "omega": -t * decay * math.sin(omega * t),
            "gamma,gamma": t * t * y, "omega,omega": -t * t * y,
            "gamma,omega": t * t * decay * math.sin(omega * t)}


# -- numpy: the client's tests ------------------------------------------------------------------


def black_scholes(S: Any, K: Any, T: Any, sigma: Any, r: Any) -> dict[str, np.ndarray]:
    """Price, vega and rho of :func:`black_scholes_greeks`, for arrays (broadcast together)."""
    shape = np.broadcast(S, K, T, sigma, r).shape
    greeks = [black_scholes_greeks(*map(float, row)) for row in np.broadcast(S, K, T, sigma, r)]
    return {key: np.array([g[key] for g in greeks], dtype=np.float64).reshape(shape)
            for key in ("price", "sigma", "r")}


def options(n: int, seed: int = 1) -> np.ndarray:
    """``n`` calls (S, K, T) around the money."""
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.uniform(40, 60, n), rng.uniform(40, 60, n),
                            rng.uniform(0.1, 2.0, n)])


# -- torch: each built-in routine on a batch ------------------------------------------------------

Exact = tuple[Tensor, dict[str, Tensor]]  # values (N, M) and dy/dparam (N, M), float64


def _per_sample(x: Tensor, form: Callable[..., dict[str, float]], params: tuple[float, ...],
                value: str, derivatives: tuple[str, ...]) -> Exact:
    """``form(*row, *params)`` for each row of ``x``: its ``value`` and ``derivatives``."""
    rows = [form(*row, *params) for row in x.tolist()]
    column = {key: torch.tensor([row[key] for row in rows], dtype=x.dtype)
              for key in (value, *derivatives)}
    return column[value], {key: column[key] for key in derivatives}


def _linear(x: Tensor, p: dict[str, float]) -> Exact:
    (x,) = x.unbind(1)
    return p["C"] * x, {"C": x}


def _exponential_decay(x: Tensor, p: dict[str, float]) -> Exact:
    return _per_sample(x, exponential_decay, (p["k"],), "y", ("k",))


def _logistic_growth(x: Tensor, p: dict[str, float]) -> Exact:
    return _per_sample(x, logistic_growth, (p["r"], p["K"]), "y", ("r", "K"))


def _damped_oscillator(x: Tensor, p: dict[str, float]) -> Exact:
    return _per_sample(x, damped_oscillator, (p["gamma"], p["omega"]), "y", ("gamma", "omega"))


def _black_scholes_call(x: Tensor, p: dict[str, float]) -> Exact:
    return _per_sample(x, black_scholes_greeks, (p["sigma"], p["r"]), "price", ("sigma", "r"))


def _softmax(x: Tensor, p: dict[str, float]) -> Exact:
    temp = p["T"]
    prob = torch.softmax(x / temp, dim=1)
    mean = (prob * x).sum(dim=1, keepdim=True)
    return prob, {"T": -(prob / temp**2) * (x - mean)}


def _gamma_survival(x: Tensor, p: dict[str, float]) -> Exact:
    a, t = x.unbind(1)
    lam = p["lam"]
    s = torch.tensor(
        [float(mpmath.gammainc(ai, lam * ti, mpmath.inf, regularized=True))
         for ai, ti in zip(a.tolist(), t.tolist(), strict=True)],
        dtype=x.dtype,
    )
    # dS/dlam = -t (lam t)^(a-1) exp(-lam t) / Gamma(a), in logs to stay finite
    d = -t * torch.exp((a - 1) * torch.log(lam * t) - lam * t - torch.lgamma(a))
    return s, {"lam": d}


def _uniform(g: torch.Generator, n: int, low: float, high: float) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=g, dtype=torch.float64)


@dataclass(frozen=True)
class ClosedForm:
    """A routine's closed form, a realistic batch inside its domain, and parameter values."""

    routine: str
    exact: Callable[[Tensor, dict[str, float]], Exact]
    sample: Callable[[torch.Generator, int], Tensor]  # (N, D) float64
    params: dict[str, float]

    def batch(self, n: int, seed: int = 0) -> Tensor:
        return self.sample(torch.Generator().manual_seed(seed), n)

    def expected(self, inputs: Tensor, params: dict[str, float] | None = None) -> Exact:
        values, derivs = self.exact(inputs.to(torch.float64), params or self.params)
        if values.dim() == 1:
            return values[:, None], {k: d[:, None] for k, d in derivs.items()}
        return values, derivs


def _n0_t(g: torch.Generator, n: int) -> Tensor:
    return torch.stack([_uniform(g, n, 1, 90), _uniform(g, n, 0, 10)], 1)


CLOSED_FORMS: dict[str, ClosedForm] = {
    c.routine: c
    for c in [
        ClosedForm("linear", _linear,
                   lambda g, n: _uniform(g, n, -10, 10)[:, None], {"C": -2.5}),
        ClosedForm("exponential_decay", _exponential_decay,
                   lambda g, n: torch.stack([_uniform(g, n, 0.1, 10), _uniform(g, n, 0, 5)], 1),
                   {"k": 0.7}),
        ClosedForm("logistic_growth", _logistic_growth, _n0_t, {"r": 0.5, "K": 100.0}),
        # RK4 is compared with the closed form of logistic_growth (test_routines: RK4_RTOL)
        ClosedForm("logistic_rk4", _logistic_growth, _n0_t, {"r": 0.5, "K": 100.0}),
        ClosedForm("damped_oscillator", _damped_oscillator,
                   lambda g, n: _uniform(g, n, 0, 20)[:, None], {"gamma": 0.15, "omega": 1.3}),
        ClosedForm("black_scholes_call", _black_scholes_call,
                   lambda g, n: torch.stack([_uniform(g, n, 80, 120), _uniform(g, n, 80, 120),
                                             _uniform(g, n, 0.25, 2)], 1),
                   {"sigma": 0.25, "r": 0.03}),
        ClosedForm("softmax", _softmax,
                   lambda g, n: 2 * torch.randn(n, 3, generator=g, dtype=torch.float64),
                   {"T": 1.5}),
        ClosedForm("gamma_survival", _gamma_survival,
                   lambda g, n: torch.stack([_uniform(g, n, 0.5, 5), _uniform(g, n, 0.1, 5)], 1),
                   {"lam": 0.8}),
    ]
}
