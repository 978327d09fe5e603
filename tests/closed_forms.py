"""Closed-form first and second derivatives of the routines, in float64, for the tests of
per-sample parameters, input sensitivities and second order."""

from __future__ import annotations

import math

__all__ = ["HULL", "black_scholes_greeks", "damped_oscillator", "exponential_decay",
           "logistic_growth", "ncdf"]

# Hull's example: S = 49, K = 50, r = 0.05, T = 20 weeks, sigma = 0.2
HULL = {"S": 49.0, "K": 50.0, "T": 0.3846, "sigma": 0.2, "r": 0.05}


def ncdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


def npdf(x: float) -> float:
    return math.exp(-x * x / 2) / math.sqrt(2 * math.pi)


def black_scholes_greeks(S: float, K: float, T: float, sigma: float,
                         r: float) -> dict[str, float]:
    """Price and its derivatives, keyed as the service keys them."""
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
