"""The checked tree of an expression: the only shapes the parser lets through.

Nodes carry no source positions, so that two texts that differ only in spacing, redundant
parentheses or the spelling of a number give equal trees (and one canonical string).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["Binary", "Call", "Comparison", "Name", "Negation", "Node", "Number", "walk"]


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
    """Every node of the tree, ``node`` first (iteratively: trees are at most the depth
    bound deep, but a walk need not rely on it)."""
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
