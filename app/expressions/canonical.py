"""The canonical text of a checked tree: what keys the parse cache's routines and batching.

One spacing, parentheses only where the tree needs them, numbers in one spelling (``2`` for
2, 2.0 and 2e0; otherwise Python's shortest repr), constants by name. Nothing is reordered or
simplified: ``a + b`` and ``b + a`` round differently in floating point, so they stay apart.
Parsing the canonical text gives the same tree back (tests/test_expressions_language.py).
"""

from __future__ import annotations

import math

from app.expressions.tree import Binary, Call, Comparison, Name, Negation, Node, Number, chain

__all__ = ["canonical", "format_number"]

_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2, "**": 4}
_UNARY = 3
_ATOM = 5


def format_number(value: float) -> str:
    value = float(value)  # an int (a bound set as 64) prints as the float it stands for
    if value == 0:
        return "-0.0" if math.copysign(1.0, value) < 0 else "0"
    if value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return repr(value)


def canonical(node: Node) -> str:
    match node:
        case Number(value, constant):
            return constant if constant is not None else format_number(value)
        case Name(id):
            return id
        case Negation(operand):
            return "-" + _operand(operand, _precedence(operand) < _UNARY)
        case Binary("**", left, right):
            # right-associative, and tighter than a unary minus on its left
            p = _PRECEDENCE["**"]
            left_parens, right_parens = _precedence(left) <= p, _precedence(right) < _UNARY
            return f"{_operand(left, left_parens)} ** {_operand(right, right_parens)}"
        case Binary(op):
            # a run of + - (or * /) is printed in one loop, not one call per operator: a flat
            # sum is as long as the node bound allows (tree.chain)
            p = _PRECEDENCE[op]
            first, rest = chain(node)
            parts = [_operand(first, _precedence(first) < p)]
            for symbol, right in rest:
                parts.append(f"{symbol} {_operand(right, _precedence(right) <= p)}")
            return " ".join(parts)
        case Comparison(ops, operands):
            text = canonical(operands[0])
            for op, operand in zip(ops, operands[1:], strict=True):
                text += f" {op} {canonical(operand)}"
            return text
        case Call(function, args):
            return f"{function}({', '.join(canonical(a) for a in args)})"


def _operand(node: Node, parens: bool) -> str:
    text = canonical(node)
    return f"({text})" if parens else text


def _precedence(node: Node) -> int:
    match node:
        case Number(value, None) if math.copysign(1.0, value) < 0:
            return _UNARY  # printed with its minus sign
        case Negation():
            return _UNARY
        case Binary(op):
            return _PRECEDENCE[op]
        case Comparison():
            return 0
    return _ATOM
