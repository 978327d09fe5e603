"""Integrating dy/dt = rhs(t, y) from an initial value over [0, T] in fixed steps.

``T`` is each sample's own (an input column or a parameter), so the step ``h = T / steps``
is per sample, and derivatives flow through every step. The steps are written as the
``logistic_rk4`` routine writes them, operation for operation, so that the ODE form of the
logistic model gives its numbers to rounding; the current time, where the right-hand side
reads it, is carried as ``s + h`` rather than ``i * h`` so that every step is the same
operations (the compiled path rolls such a run of steps back into one, app.engine.compiled.rolled).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from app.expressions.interpreter import Value

__all__ = ["METHODS", "OdeSpec", "integrate"]

METHODS = ("euler", "rk4")

# rate(s, y): the right-hand side at time s (None where the right-hand side does not read it)
Rate = Callable[[Value | None, Tensor], Value]


@dataclass(frozen=True)
class OdeSpec:
    """``d state / d time = rhs`` from ``initial`` (an expression of inputs and parameters)
    over [0, time], where ``time`` names an input or parameter: the end time of each sample,
    and, inside ``rhs``, the current time."""

    rhs: str
    state: str
    initial: str
    time: str
    steps: int = 200
    method: str = "rk4"


def integrate(
    rate: Rate, initial: Tensor, end: Tensor, steps: int, method: str, *, timed: bool
) -> Tensor:
    """The state at ``end`` after ``steps`` fixed steps of ``method`` (euler or rk4)."""
    h = end / steps
    y = initial
    s: Value | None = 0.0 if timed else None
    for _ in range(steps):
        if method == "euler":
            y = y + h * rate(s, y)
        else:
            half = None if s is None else s + 0.5 * h
            k1 = rate(s, y)
            k2 = rate(half, y + 0.5 * h * k1)
            k3 = rate(half, y + 0.5 * h * k2)
            k4 = rate(None if s is None else s + h, y + h * k3)
            y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        if s is not None:
            s = s + h
    return y
