"""Logistic growth, in closed form and by integrating its ODE step by step."""

from __future__ import annotations

from torch import Tensor

from routines.registry import Param, routine

__all__ = ["RK4_STEPS", "logistic_growth", "logistic_rk4"]

RK4_STEPS = 200

_PARAMS = [
    Param("r", 0.5, "growth rate (1/time)"),
    Param("K", 100.0, "carrying capacity", bounds=(0.0, None)),
]


@routine(
    description="N = K / (1 + ((K - N0)/N0) exp(-r t)): logistic growth from N0 after time t.",
    params=_PARAMS,
    inputs=["N0", "t"],
    outputs=["N"],
)
def logistic_growth(N0: Tensor, t: Tensor, *, r: Tensor, K: Tensor) -> Tensor:
    return K / (1 + (K - N0) / N0 * (-r * t).exp())


@routine(
    description=(
        f"dN/dt = r N (1 - N/K) integrated from N0 over [0, t] by classic RK4 in {RK4_STEPS} "
        "fixed steps; the derivative flows through every step."
    ),
    params=_PARAMS,
    inputs=["N0", "t"],
    outputs=["N"],
)
def logistic_rk4(N0: Tensor, t: Tensor, *, r: Tensor, K: Tensor) -> Tensor:
    def rate(n: Tensor) -> Tensor:
        return r * n * (1 - n / K)

    h = t / RK4_STEPS
    n = N0
    for _ in range(RK4_STEPS):
        k1 = rate(n)
        k2 = rate(n + 0.5 * h * k1)
        k3 = rate(n + 0.5 * h * k2)
        k4 = rate(n + h * k3)
        n = n + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return n
