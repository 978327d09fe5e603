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

from app.expressions.functions import COMPARISONS, FUNCTIONS, power
from app.expressions.tree import Binary, Call, Comparison, Name, Negation, Node, Number, chain

__all__ = ["Evaluator", "Scope", "Value", "interpret"]

Value = Tensor | float


_BINARY: dict[str, Callable[[Value, Value], Value]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "**": power,
}


class Scope:
    """The values of the names for one call, the dtype and device literals take, inside a
    branch of ``where`` the samples whose value of that branch is not used (``unused``), and
    while a condition is computed the samples where it compared a NaN (``undefined``)."""

    __slots__ = ("device", "dtype", "undefined", "unused", "values")

    def __init__(self, values: dict[str, Tensor], like: Tensor) -> None:
        self.values = values
        self.dtype = like.dtype
        self.device = like.device
        self.unused: Tensor | None = None
        self.undefined: Tensor | None = None

    def tensor(self, value: Value) -> Tensor:
        if isinstance(value, Tensor):
            return value
        return torch.full((), value, dtype=self.dtype, device=self.device)

    def guarded(self, value: Value, safe: float) -> Value:
        """``value``, with ``safe`` (a point where the operation about to take it is finite,
        with finite derivatives) for the samples whose result is not used. ``where(x != 0,
        C / x, C)`` at x = 0: the branch not taken is inf there, and reverse mode multiplies
        its zero gradient by the inf of 1/x, so NaN reached dy/dC; forward mode selects
        tangents and never saw it. The double-where of JAX's FAQ, applied by the
        interpreter at each operation that has a singular point."""
        if self.unused is None or not isinstance(value, Tensor):
            return value
        return torch.where(self.unused, safe, value)


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
            return _binary(interpret(first), [(op, interpret(r)) for op, r in rest])
        case Comparison(ops, operands):
            return _comparison([COMPARISONS[op] for op in ops], [interpret(o) for o in operands])
        case Call("where", [condition, a, b]):
            return _where(interpret(condition), interpret(a), interpret(b))
        case Call(function, args):
            f = FUNCTIONS[function]
            return _call(f.apply, [interpret(a) for a in args], f.safe)


# Operators with a singular point, guarded in a branch of where (Scope.guarded): a / b at
# b = 0, a ** b at a <= 0 (and overflow), both operands made 1 where unused
_SINGULAR = frozenset({"/", "**"})


def _binary(first: Evaluator, rest: list[tuple[str, Evaluator]]) -> Evaluator:
    """``first``, then each operator and its operand, left to right: a run of + - (or * /)
    is one closure that loops, where a closure per operator calling the next would recurse as
    deep as the run, when run and when traced by torch.compile."""
    steps = [(_BINARY[symbol], symbol in _SINGULAR, right) for symbol, right in rest]

    def binary(scope: Scope) -> Value:
        a = first(scope)
        for op, singular, right in steps:
            b = right(scope)
            if not isinstance(a, Tensor) and not isinstance(b, Tensor):
                a = scope.tensor(a)
            if singular and scope.unused is not None:
                a, b = scope.guarded(a, 1.0), scope.guarded(b, 1.0)
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
        # a NaN compares false: where(log(x) > 0, C, 2 * C) at x = -1 took the second branch
        # and answered 2 C; where() makes the samples that compared one undefined
        undefined = torch.isnan(values[0])
        for value in values[1:]:
            undefined = undefined | torch.isnan(value)
        if scope.unused is not None:  # (a branch's samples it does not serve are not its)
            undefined = undefined & ~scope.unused
        scope.undefined = undefined if scope.undefined is None else scope.undefined | undefined
        return result

    return comparison


def _call(apply: Callable[..., Tensor], args: list[Evaluator],
          safe: float | None) -> Evaluator:
    """A function of the language; one with a singular point (``safe``: a point of its
    domain) takes its argument guarded inside a branch of where."""
    if safe is None:
        def call(scope: Scope) -> Value:
            return apply(*(scope.tensor(a(scope)) for a in args))
    else:
        def call(scope: Scope) -> Value:
            return apply(*(scope.tensor(scope.guarded(a(scope), safe)) for a in args))

    return call


def _where(condition: Evaluator, a: Evaluator, b: Evaluator) -> Evaluator:
    """``where(condition, a, b)``: each branch evaluated knowing which samples it does not
    serve (Scope.unused), so that its singular operations are guarded there."""

    def where(scope: Scope) -> Value:
        scope.undefined = None
        test = scope.tensor(condition(scope))
        undefined, scope.undefined = scope.undefined, None
        outer = scope.unused
        try:
            scope.unused = ~test if outer is None else outer | ~test
            taken = scope.tensor(a(scope))
            scope.unused = test if outer is None else outer | test
            other = scope.tensor(b(scope))
        finally:
            scope.unused = outer
        chosen = torch.where(test, taken, other)
        if undefined is None:
            return chosen
        return torch.where(undefined, torch.full_like(chosen, torch.nan), chosen)

    return where
