"""The checked tree of an expression: the only shapes the parser lets through.

Nodes carry no source positions, so that two texts that differ only in spacing, redundant
parentheses or the spelling of a number give equal trees (and one canonical string).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

__all__ = [
    "GROUPS",
    "Binary",
    "Call",
    "Comparison",
    "Name",
    "Negation",
    "Node",
    "Number",
    "chain",
    "walk",
]

# The operators that chain left to right at one precedence: a + b - c is (a + b) - c, one run
# of the same group. ** is not here: it is right-associative, so a left-leaning ** is written
# with parentheses and is nesting.
GROUPS = {"+": 1, "-": 1, "*": 2, "/": 2}


@dataclass(frozen=True, slots=True)
class Number:
    """A literal, or the constant named ``constant`` (pi, e)."""

    value: float
    constant: str | None = None


@dataclass(frozen=True, slots=True)
class Name:
    """A declared input or parameter (or, in an ODE's right-hand side, its state or time)."""

    id: str


@dataclass(frozen=True, slots=True)
class Negation:
    operand: Node


@dataclass(frozen=True, slots=True)
class Binary:
    op: str  # + - * / **
    left: Node
    right: Node


@dataclass(frozen=True, slots=True)
class Comparison:
    """``operands[0] ops[0] operands[1] ops[1] ...``, chained as in Python; only ever the
    condition of ``where``."""

    ops: tuple[str, ...]
    operands: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Call:
    function: str
    args: tuple[Node, ...]


Node = Number | Name | Negation | Binary | Comparison | Call


def walk(node: Node) -> Iterator[Node]:
    """Every node of the tree, ``node`` first (iteratively: a run of + or * is as deep as the
    node bound allows, see :func:`chain`)."""
    stack: list[Node] = [node]
    while stack:
        current = stack.pop()
        yield current
        match current:
            case Negation(operand):
                stack.append(operand)
            case Binary(_, left, right):
                stack += (right, left)
            case Comparison(_, operands) | Call(_, operands):
                stack += reversed(operands)


def chain(node: Binary) -> tuple[Node, list[tuple[str, Node]]]:
    """``node`` as its first operand and the operators and operands that follow it, left to
    right: a + b - c is ``a, [("+", b), ("-", c)]``. A flat sum or product of n terms is a
    left-leaning run of n - 1 Binary nodes, bounded by the node count, not the depth: walks that
    recurse go along the run with this, so that their recursion is only the nesting."""
    group = GROUPS.get(node.op)
    first, rest = node.left, [(node.op, node.right)]
    while group is not None and isinstance(first, Binary) and GROUPS.get(first.op) == group:
        rest.append((first.op, first.right))
        first = first.left
    rest.reverse()
    return first, rest
