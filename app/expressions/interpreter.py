"""Running a checked tree: each node becomes a closure over torch operations, once, when the
expression is parsed; a call of the routine then runs only those closures.

The values are tensors, except number literals, which stay Python floats where they meet a
tensor (``1 + x``, as a routine written by hand would do, so that the two agree bit for bit)
and become tensors of the sample's dtype where nothing else would give one (``2 ** 3``,
``exp(1)``): no arithmetic ever runs on Python numbers, which would overflow with an exception
(``9.0 ** 9 ** 9``) where a tensor gives inf (which the engine reports as a non-finite result).
"""

from __future__ import annotations

import operator
from collections.abc import Callable

import torch
from torch import Tensor

from app.expressions.functions import COMPARISONS, FUNCTIONS
from app.expressions.tree import Binary, Call, Comparison, Name, Negation, Node, Number, chain

__all__ = ["Evaluator", "Scope", "Value", "interpret"]

Value = Tensor | float

_BINARY: dict[str, Callable[[Value, Value], Value]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "**": operator.pow,
}


class Scope:
    """The values of the names for one call, and the dtype and device literals take."""

    __slots__ = ("device", "dtype", "values")

    def __init__(self, values: dict[str, Tensor], like: Tensor) -> None:
        self.values = values
        self.dtype = like.dtype
        self.device = like.device

    def tensor(self, value: Value) -> Tensor:
        if isinstance(value, Tensor):
            return value
        return torch.full((), value, dtype=self.dtype, device=self.device)


Evaluator = Callable[[Scope], Value]


def interpret(node: Node) -> Evaluator:
    """The closure that computes ``node`` in a scope."""
    match node:
        case Number(value):
            return lambda scope: value
        case Name(id):
            return lambda scope: scope.values[id]
        case Negation(operand):
            inner = interpret(operand)
            return lambda scope: -inner(scope)
        case Binary():
            first, rest = chain(node)
            return _binary(interpret(first), [(_BINARY[op], interpret(r)) for op, r in rest])
        case Comparison(ops, operands):
            return _comparison([COMPARISONS[op] for op in ops], [interpret(o) for o in operands])
        case Call(function, args):
            return _call(FUNCTIONS[function].apply, [interpret(a) for a in args])


def _binary(
    first: Evaluator, rest: list[tuple[Callable[[Value, Value], Value], Evaluator]]
) -> Evaluator:
    """``first``, then each operator and its operand, left to right: a run of + - (or * /)
    is one closure that loops, where a closure per operator calling the next would recurse as
    deep as the run, when run and when traced by torch.compile."""

    def binary(scope: Scope) -> Value:
        a = first(scope)
        for op, right in rest:
            b = right(scope)
            if not isinstance(a, Tensor) and not isinstance(b, Tensor):
                a = scope.tensor(a)
            a = op(a, b)
        return a

    return binary


def _comparison(
    ops: list[Callable[[Tensor, Tensor], Tensor]], operands: list[Evaluator]
) -> Evaluator:
    def comparison(scope: Scope) -> Value:
        values = [scope.tensor(o(scope)) for o in operands]
        result = ops[0](values[0], values[1])
        for i in range(1, len(ops)):  # a < b < c: (a < b) and (b < c), b computed once
            result = result & ops[i](values[i], values[i + 1])
        return result

    return comparison


def _call(apply: Callable[..., Tensor], args: list[Evaluator]) -> Evaluator:
    def call(scope: Scope) -> Value:
        return apply(*(scope.tensor(a(scope)) for a in args))

    return call
