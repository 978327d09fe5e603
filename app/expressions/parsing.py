"""From the caller's text to a checked tree, refusing everything outside the language.

Python's ``ast`` parses the text in ``eval`` mode (one expression: no statements, so no
imports, assignments or definitions can even be written); the parse runs no code. A
:class:`ast.NodeVisitor` then walks the parse tree: each ``visit_*`` method is one construct
the language allows and builds its node of :mod:`app.expressions.tree`, and ``generic_visit``,
reached by every other construct (attributes, subscripts, lambdas, comprehensions, strings,
f-strings, conditional expressions, ...), refuses it, naming it and its column. Nothing of the
user's text is ever evaluated, compiled to code or looked up as an attribute: the tree is
interpreted by :mod:`app.expressions.interpreter`, over the functions of a fixed table.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Collection
from typing import Never

import torch

from app.expressions.bounds import Bounds
from app.expressions.canonical import format_number
from app.expressions.errors import ExpressionError, ExpressionTooLarge, UnknownName
from app.expressions.functions import COMPARISONS, CONSTANTS, FUNCTIONS
from app.expressions.interpreter import Scope, interpret
from app.expressions.tree import (
    GROUPS,
    Binary,
    Call,
    Comparison,
    Name,
    Negation,
    Node,
    Number,
    walk,
)

__all__ = ["parse"]

_FILENAME = "<expression>"

_OPERATORS: dict[type[ast.operator], str] = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.Pow: "**",
}
_REFUSED_OPERATORS: dict[type[ast.AST], str] = {
    ast.Mod: "%",
    ast.FloorDiv: "//",
    ast.MatMult: "@",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.BitOr: "|",
    ast.BitXor: "^",
    ast.BitAnd: "&",
    ast.Not: "not",
    ast.Invert: "~",
}
_COMPARISONS: dict[type[ast.cmpop], str] = {
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.Eq: "==",
    ast.NotEq: "!=",
}
assert set(_COMPARISONS.values()) == set(COMPARISONS)

# What a refused construct is called in the message, and what to write instead (else the
# message lists what the language has).
_CONSTRUCTS: dict[type[ast.AST], tuple[str, str | None]] = {
    ast.Attribute: ("attribute access (.name)", None),
    ast.Subscript: ("subscript ([...])", None),
    ast.Slice: ("slice", None),
    ast.Lambda: ("lambda", None),
    ast.ListComp: ("comprehension", None),
    ast.SetComp: ("comprehension", None),
    ast.DictComp: ("comprehension", None),
    ast.GeneratorExp: ("generator expression", None),
    ast.List: ("list", None),
    ast.Tuple: ("tuple", None),
    ast.Set: ("set", None),
    ast.Dict: ("dict", None),
    ast.IfExp: ("conditional expression (a if c else b)", "write where(c, a, b)"),
    ast.BoolOp: ("and/or", "write where() with one comparison, or nest where()"),
    ast.NamedExpr: ("assignment expression (:=)", None),
    ast.Starred: ("starred argument (*)", None),
    ast.JoinedStr: ("f-string", None),
    ast.FormattedValue: ("f-string", None),
    ast.Await: ("await", None),
    ast.Yield: ("yield", None),
    ast.YieldFrom: ("yield", None),
}
# What a call of something other than a name calls, where no construct above names it.
_CALLEES: dict[type[ast.AST], str] = {
    ast.Call: "function's result",
    ast.Constant: "literal",
    ast.BinOp: "operation's result",
    ast.UnaryOp: "operation's result",
    ast.Compare: "comparison",
}
_OFFER = (
    "the language has numbers, the declared names, + - * / **, unary -, "
    "where(comparison, a, b) and the functions " + ", ".join(FUNCTIONS)
)


def parse(text: str, names: Collection[str], bounds: Bounds, *, field: str = "expression") -> Node:
    """The checked tree of ``text``, whose names may be ``names`` and the constants.

    Raises :class:`ExpressionError` (and nothing else) for any text that is not an
    expression of the language; ``field`` prefixes its message (the request's field).
    """
    if len(text) > bounds.max_chars:
        raise ExpressionTooLarge(
            f"the expression has {len(text)} characters, more than {bounds.max_chars}",
            setting="DYDC_EXPRESSION_MAX_CHARS",
            field=field,
        )
    _refuse_characters(text, field)
    # whitespace before the expression is no part of it (Python's parser would call it an
    # indent); columns still count it
    body = text.lstrip()
    lead = len(text) - len(body)
    # nothing to parse (blank, or comments alone): Python's parser would call it invalid
    # syntax at column 0
    if all(not line.strip() or line.lstrip().startswith("#") for line in body.splitlines()):
        raise ExpressionError("the expression is empty", construct="syntax", field=field)
    try:
        tree = ast.parse(body, _FILENAME, mode="eval")
        return _Checker(text, names, bounds, field, lead).visit(tree.body)
    except SyntaxError as exc:
        column, where = None, ""
        if exc.lineno is not None and exc.offset is not None:
            if exc.offset < 1:  # the parser's way of saying that the text ended too early
                column = len(text.rstrip()) + 1
                where = f" at column {column}, where the text ends"
            else:
                column = _Positions(text, lead).column(exc.lineno, exc.offset - 1)
                where = f" at column {column}"
        hint = ("; a line break ends the expression unless it is inside parentheses"
                if exc.lineno is not None and exc.lineno > 1 else "")
        raise ExpressionError(
            f"not an expression: {exc.msg}{where}{hint}", construct="syntax", column=column,
            field=field,
        ) from None
    except (RecursionError, MemoryError):  # the parser's own nesting limit
        raise ExpressionTooLarge(
            f"the expression is nested more deeply than {bounds.max_depth} levels",
            setting="DYDC_EXPRESSION_MAX_DEPTH",
            field=field,
        ) from None


def _with_article(noun: str) -> str:
    """'an attribute access', 'a subscript', 'an f-string' (said "ef-string")."""
    return f"{'an' if noun[0] in 'aeioAEIO' or noun.startswith('f-') else 'a'} {noun}"


def _refuse_characters(text: str, field: str) -> None:
    """ASCII only: Python folds lookalike letters to ASCII ones (NFKC), so that 'exp' written
    with a fullwidth 'e' would read as 'exp'; here the caller is told instead. Control
    characters other than tab and line breaks (NUL included) are refused too."""
    for i, char in enumerate(text):
        if not (" " <= char <= "~" or char in "\t\n\r"):
            raise ExpressionError(
                f"character U+{ord(char):04X} at column {i + 1} is not allowed: expressions "
                "are written in ASCII",
                construct="character",
                column=i + 1,
                field=field,
            )


def _literal_value(node: Node) -> float | None:
    """The value of a node of literals alone (a number, or 9 ** 9), computed in float64 by
    the interpreter (never by Python); None where it holds a name."""
    if isinstance(node, Number):
        return node.value
    if any(isinstance(n, Name) for n in walk(node)):
        return None
    scope = Scope({}, torch.zeros((), dtype=torch.float64))
    return float(scope.tensor(interpret(node)(scope)))


class _Positions:
    """Columns counted over the whole text (1-based), from the parser's line and offset."""

    def __init__(self, text: str, lead: int = 0) -> None:
        self._text = text
        # the parser saw text[lead:]: its lines start at these offsets of text
        # (a line ends at \n, \r\n or a lone \r, as Python's parser counts them: a lone
        # \r counted as nothing sent a column past the last line, an IndexError and a 500)
        self._starts = [lead]
        for i in range(lead, len(text)):
            if text[i] == "\n" or (text[i] == "\r" and text[i + 1:i + 2] != "\n"):
                self._starts.append(i + 1)

    def column(self, lineno: int, col_offset: int) -> int:
        # ASCII only (checked before parsing): the parser's byte offsets are characters
        return self._starts[lineno - 1] + col_offset + 1

    def of(self, node: ast.expr | ast.keyword) -> int:
        return self.column(node.lineno, node.col_offset)

    def operator(self, node: ast.BinOp) -> int:
        """Where the operator itself is: the first character after the left operand that is
        neither space nor a closing parenthesis."""
        start = self.of(node.left) - 1
        if node.left.end_lineno is not None and node.left.end_col_offset is not None:
            start = self.column(node.left.end_lineno, node.left.end_col_offset) - 1
        i = start
        while i < len(self._text) and self._text[i] in " \t\r\n)":
            i += 1
        return i + 1


class _Checker(ast.NodeVisitor):
    """One ``visit_*`` per allowed construct; everything else reaches ``generic_visit``."""

    def __init__(self, text: str, names: Collection[str], bounds: Bounds, field: str,
                 lead: int) -> None:
        self._positions = _Positions(text, lead)
        self._names = frozenset(names)
        self._bounds = bounds
        self._field = field
        self._nodes = self._depth = 0
        self._condition_allowed = False

    # -- the walk ---------------------------------------------------------------------------

    def visit(self, node: ast.AST) -> Node:
        assert isinstance(node, ast.expr)  # only expressions are ever visited
        self._count(node)
        self._depth += 1
        if self._depth > self._bounds.max_depth:
            raise ExpressionTooLarge(
                f"the expression is nested more deeply than {self._bounds.max_depth} levels "
                f"(at column {self._column(node)})",
                setting="DYDC_EXPRESSION_MAX_DEPTH",
                column=self._column(node),
                field=self._field,
            )
        try:
            checked: Node = super().visit(node)
        finally:
            self._depth -= 1
        return checked

    def generic_visit(self, node: ast.AST) -> Node:
        if isinstance(node, ast.Compare):
            self._refuse(
                "comparison outside where",
                node,
                "a comparison is only the condition of where(condition, a, b)",
            )
        construct, hint = _CONSTRUCTS.get(type(node), (type(node).__name__, None))
        self._refuse(construct, node, hint)

    # -- allowed constructs -----------------------------------------------------------------

    def visit_Constant(self, node: ast.Constant) -> Node:
        return Number(self._number(node))

    def visit_Name(self, node: ast.Name) -> Node:
        if node.id in self._names:
            return Name(node.id)
        if node.id in CONSTANTS:
            return Number(CONSTANTS[node.id], constant=node.id)
        raise UnknownName(node.id, self._column(node), self._names, field=self._field)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> Node:
        if isinstance(node.op, ast.USub):
            operand = self.visit(node.operand)
            # a negative literal is one number however it is written (-0, -+0, - -3), so that
            # the canonical text parses back to the same tree
            if isinstance(operand, Number) and operand.constant is None:
                return Number(-operand.value)
            return Negation(operand)
        if isinstance(node.op, ast.UAdd):
            return self.visit(node.operand)
        self._refuse(f"operator {_REFUSED_OPERATORS[type(node.op)]}", node)

    def visit_BinOp(self, node: ast.BinOp) -> Node:
        # a run of one group's operators, a + b - c + ... (Python's parser nests it to the
        # left), is one level of nesting: a flat sum or product is bounded by the node count
        # alone, so its operators are walked in this loop and only its operands recursively
        run = [node]
        group = GROUPS.get(self._operator(node))
        while group is not None and isinstance(left := run[-1].left, ast.BinOp) \
                and GROUPS.get(_OPERATORS.get(type(left.op), "")) == group:
            self._count(left)
            run.append(left)
        checked = self.visit(run[-1].left)
        for binary in reversed(run):
            op = _OPERATORS[type(binary.op)]
            right = self.visit(binary.right)
            if op == "**":
                self._check_exponent(right, binary.right)
            checked = Binary(op, checked, right)
        return checked

    def visit_Compare(self, node: ast.Compare) -> Node:
        if not self._condition_allowed:
            return self.generic_visit(node)
        self._condition_allowed = False
        ops = []
        for op in node.ops:
            symbol = _COMPARISONS.get(type(op))
            if symbol is None:
                self._refuse(
                    f"comparison {type(op).__name__}", node, "compare with < <= > >= == !="
                )
            ops.append(symbol)
        operands = tuple(self.visit(o) for o in (node.left, *node.comparators))
        return Comparison(tuple(ops), operands)

    def visit_Call(self, node: ast.Call) -> Node:
        if not isinstance(node.func, ast.Name):
            callee = _CALLEES.get(type(node.func)) or _CONSTRUCTS.get(
                type(node.func), (type(node.func).__name__, None))[0]
            self._refuse(
                f"call of {_with_article(callee)}",
                node,
                "only the language's functions may be called, by name",
            )
        function = FUNCTIONS.get(node.func.id)
        if function is None:
            self._refuse(f"call of {node.func.id!r}", node, "not a function of the language")
        if node.keywords:
            self._refuse("keyword argument", node.keywords[0], "pass arguments by position")
        if len(node.args) != function.arity:
            self._refuse(
                f"{function.name}() with {len(node.args)} arguments",
                node,
                f"write {function.signature}",
            )
        if function.name == "where" and not isinstance(node.args[0], ast.Compare):
            self._refuse(
                "where() with a condition that is not a comparison",
                node.args[0],
                "write a comparison such as x > 0",
            )
        args = []
        for i, arg in enumerate(node.args):
            self._condition_allowed = function.name == "where" and i == 0
            args.append(self.visit(arg))
        if function.name == "pow":
            self._check_exponent(args[1], node.args[1])
        return Call(function.name, tuple(args))

    # -- helpers ----------------------------------------------------------------------------

    def _count(self, node: ast.expr) -> None:
        self._nodes += 1
        if self._nodes > self._bounds.max_nodes:
            raise ExpressionTooLarge(
                f"the expression has more than {self._bounds.max_nodes} nodes",
                setting="DYDC_EXPRESSION_MAX_NODES",
                column=self._column(node),
                field=self._field,
            )

    def _operator(self, node: ast.BinOp) -> str:
        op = _OPERATORS.get(type(node.op))
        if op is None:
            self._refuse(f"operator {_REFUSED_OPERATORS[type(node.op)]}", node,
                         column=self._positions.operator(node))
        return op

    def _number(self, node: ast.Constant) -> float:
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            kind = {str: "string", bytes: "bytes", complex: "complex number", bool: "boolean"}
            self._refuse(kind.get(type(value), repr(value)), node, "numbers only")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise ExpressionTooLarge(
                f"the number at column {self._column(node)} is too large for a float",
                setting=None,
                column=self._column(node),
                field=self._field,
            )
        return number

    def _check_exponent(self, exponent: Node, node: ast.expr) -> None:
        """A literal exponent, or one computed from literals alone (9 ** 9 in 9 ** 9 ** 9),
        is at most the bound in absolute value."""
        value = _literal_value(exponent)
        if value is not None and abs(value) > self._bounds.max_exponent:
            raise ExpressionTooLarge(
                f"the literal exponent {format_number(value)} at column {self._column(node)} "
                f"is more than {format_number(self._bounds.max_exponent)} in absolute value",
                setting="DYDC_EXPRESSION_MAX_EXPONENT",
                column=self._column(node),
                field=self._field,
            )

    def _column(self, node: ast.expr | ast.keyword) -> int:
        return self._positions.of(node)

    def _refuse(
        self, construct: str, node: ast.AST, hint: str | None = None, *, column: int | None = None
    ) -> Never:
        if column is None and isinstance(node, ast.expr | ast.keyword):
            column = self._column(node)
        where = f" at column {column}" if column is not None else ""
        raise ExpressionError(
            f"{construct}{where} is not allowed: {hint or _OFFER}",
            construct=construct,
            column=column,
            field=self._field,
        )
