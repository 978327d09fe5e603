"""What the expression language refuses, as engine errors (HTTP 422 through InvalidRequest).

    InvalidRequest                      (app.engine.errors, HTTP 422)
     └── ExpressionError           the text is not an expression of the language
          ├── ExpressionTooLarge        over a bound (length, nodes, depth, steps, exponent)
          └── UnknownName               a name that is neither an input nor a parameter

Each message names the construct and its column (1-based, in characters) where there is one,
and what to write instead.
"""

from __future__ import annotations

from collections.abc import Iterable

from app.engine.errors import InvalidRequest, listed

__all__ = ["ExpressionError", "ExpressionTooLarge", "UnknownName"]


class ExpressionError(InvalidRequest):
    """An expression (or an ODE specification) the language refuses."""

    def __init__(
        self,
        message: str,
        *,
        construct: str | None = None,
        column: int | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.construct = construct
        self.column = column
        self.field = field  # the request field it is of (v1's name), said before ``detail``
        self.detail = message


class ExpressionTooLarge(ExpressionError):
    """Over one of the language's bounds; ``setting`` names the variable that raises it."""

    def __init__(
        self,
        message: str,
        *,
        setting: str | None,
        column: int | None = None,
        field: str | None = None,
    ) -> None:
        hint = f" (the bound is {setting})" if setting else ""
        super().__init__(f"{message}{hint}", column=column, field=field)
        self.setting = setting


class UnknownName(ExpressionError):
    """A name in the expression that is neither a declared input nor a parameter."""

    def __init__(
        self, name: str, column: int, declared: Iterable[str], *, field: str | None = None
    ) -> None:
        names = sorted(declared)
        known = listed(names) if names else "none"
        super().__init__(
            f"unknown name {name!r} at column {column}: neither an input nor a parameter; "
            f"declared: {known} (and the constants pi, e)",
            construct="name",
            column=column,
            field=field,
        )
        self.name = name
