"""The functions and constants of the expression language, each mapped to torch operations.

Every function here takes and returns tensors (the interpreter turns number literals into
tensors of the request's dtype first) and has forward- and reverse-mode derivatives in torch,
to second order, so that every strategy differentiates an expression as it does a routine.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor

from routines.finance import normal_cdf  # (not torch.special.ndtr: its lower tail is lost)

__all__ = ["COMPARISONS", "CONSTANTS", "FUNCTIONS", "Function", "catalogue", "power"]

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@dataclass(frozen=True)
class Function:
    name: str
    arity: int
    apply: Callable[..., Tensor]
    description: str
    # a point of its domain where it and its derivatives are finite, for a function with a
    # singular point (or one that overflows): inside a branch of where, the samples the
    # branch does not serve take it (app.expressions.interpreter.Scope.guarded)
    safe: float | None = None

    @property
    def signature(self) -> str:
        names = {1: "x", 2: "a, b", 3: "x, low, high"}[self.arity]
        if self.name == "where":
            names = "condition, a, b"
        return f"{self.name}({names})"


def _softplus(x: Tensor) -> Tensor:
    # log(1 + exp(x)) without overflow; torch.nn.functional.softplus turns linear past a
    # threshold, which would make its derivative 1 where the true one is 1 - 2e-9.
    return torch.logaddexp(x, torch.zeros_like(x))


def _norm_pdf(x: Tensor) -> Tensor:
    return torch.exp(-0.5 * x * x) * _INV_SQRT_2PI


def power(a: Tensor | float, b: Tensor | float) -> Tensor:
    """``a ** b`` (the operator and ``pow``), undefined (NaN) where either is: IEEE's pow
    gives 1 for 1 ** NaN and NaN ** 0, so ``C * 1 ** log(x)`` at x = -1 answered C, a number
    for an undefined expression. (One of the two is a tensor: the interpreter makes one.)"""
    result = cast(Tensor, a ** b)
    for operand in (a, b):
        if isinstance(operand, Tensor):
            result = torch.where(torch.isnan(operand), operand, result)
    return result


def _clamp(x: Tensor, low: Tensor, high: Tensor) -> Tensor:
    return torch.minimum(torch.maximum(x, low), high)


FUNCTIONS: dict[str, Function] = {
    f.name: f
    for f in (
        Function("exp", 1, torch.exp, "e to the power x", 0.0),
        Function("log", 1, torch.log, "natural logarithm", 1.0),
        Function("log1p", 1, torch.log1p, "log(1 + x), accurate near 0", 0.0),
        Function("expm1", 1, torch.expm1, "exp(x) - 1, accurate near 0", 0.0),
        Function("sqrt", 1, torch.sqrt, "square root", 1.0),
        Function("abs", 1, torch.abs, "absolute value"),
        Function("sin", 1, torch.sin, "sine (radians)"),
        Function("cos", 1, torch.cos, "cosine (radians)"),
        Function("tan", 1, torch.tan, "tangent (radians)", 0.0),
        Function("tanh", 1, torch.tanh, "hyperbolic tangent"),
        Function("sinh", 1, torch.sinh, "hyperbolic sine", 0.0),
        Function("cosh", 1, torch.cosh, "hyperbolic cosine", 0.0),
        Function("arcsin", 1, torch.asin, "inverse sine", 0.0),
        Function("arccos", 1, torch.acos, "inverse cosine", 0.0),
        Function("arctan", 1, torch.atan, "inverse tangent"),
        Function("sigmoid", 1, torch.sigmoid, "1 / (1 + exp(-x))"),
        Function("softplus", 1, _softplus, "log(1 + exp(x)), without overflow"),
        Function("erf", 1, torch.special.erf, "error function"),
        Function("erfc", 1, torch.special.erfc, "1 - erf(x), accurate for large x"),
        Function("ndtr", 1, normal_cdf, "standard normal cumulative distribution"),
        Function("norm_pdf", 1, _norm_pdf, "standard normal density exp(-x**2 / 2) / sqrt(2 pi)"),
        Function("gammaln", 1, torch.special.gammaln, "log |Gamma(x)|", 1.0),
        Function("min", 2, torch.minimum, "the smaller of a and b"),
        Function("max", 2, torch.maximum, "the larger of a and b"),
        Function("pow", 2, power, "a to the power b (as a ** b)", 1.0),
        Function("clamp", 3, _clamp, "x limited to [low, high]: min(max(x, low), high)"),
        Function(
            "where",
            3,
            torch.where,  # (the interpreter runs it itself, guarding its branches)
            "a where the comparison holds, else b; the condition is a comparison "
            "(< <= > >= == !=, chained as in 0 < x < 1)",
        ),
    )
}

CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e}

COMPARISONS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "<": torch.lt,
    "<=": torch.le,
    ">": torch.gt,
    ">=": torch.ge,
    "==": torch.eq,
    "!=": torch.ne,
}


def catalogue() -> dict[str, object]:
    """What the language offers, as a JSON-ready listing (for GET /v1/expressions/functions)."""
    return {
        "functions": [
            {
                "name": f.name,
                "signature": f.signature,
                "arity": f.arity,
                "description": f.description,
            }
            for f in FUNCTIONS.values()
        ],
        "constants": dict(CONSTANTS),
        "operators": ["+", "-", "*", "/", "**", "unary -", "unary +"],
        "comparisons": list(COMPARISONS),
    }
