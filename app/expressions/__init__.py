"""Callers' own functions: a small, safe expression language (and ODE right-hand sides) whose
expressions run as routines. Knows nothing of HTTP; see docs/expressions.md."""

from app.expressions.adapter import ExpressionRoutine, Expressions
from app.expressions.bounds import Bounds
from app.expressions.canonical import canonical
from app.expressions.errors import ExpressionError, ExpressionTooLarge, UnknownName
from app.expressions.functions import CONSTANTS, FUNCTIONS, catalogue
from app.expressions.ode import METHODS, OdeSpec
from app.expressions.parsing import parse

__all__ = [
    "CONSTANTS",
    "FUNCTIONS",
    "METHODS",
    "Bounds",
    "ExpressionError",
    "ExpressionRoutine",
    "ExpressionTooLarge",
    "Expressions",
    "OdeSpec",
    "UnknownName",
    "canonical",
    "catalogue",
    "parse",
]
