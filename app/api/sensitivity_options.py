"""The query options of a sensitivity request beyond ``strategy``: the bump settings of
finite differences (``shift``, ``shift_type``, ``scheme``) and ``check``.

Parsed here, in one place for every route that takes them (sensitivities, compare), and
handed to the engine as plain values; the engine checks them against the request.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from app.engine import Bump, Request
from app.engine.errors import InvalidRequest

__all__ = ["BUMP_OPTIONS", "QUERY", "SensitivityOptions", "sensitivity_options", "with_query"]

BUMP_OPTIONS = ("shift", "shift_type", "scheme")  # the query options that configure bumps

# OpenAPI declarations of the options, for the routes that read them
QUERY: list[dict[str, Any]] = [
    {"name": "shift", "in": "query", "required": False,
     "schema": {"type": "number", "exclusiveMinimum": 0},
     "description": "Finite differences: the bump h (absolute), or h / |value| (relative). "
                    "Default eps^(1/3) max(1, |value|), eps^(1/4) for second differences."},
    {"name": "shift_type", "in": "query", "required": False,
     "schema": {"type": "string", "enum": ["absolute", "relative"]},
     "description": "Finite differences: absolute (h = shift) or relative (h = shift |value|)."},
    {"name": "scheme", "in": "query", "required": False,
     "schema": {"type": "string", "enum": ["central", "forward", "backward"]},
     "description": "Finite differences: central by default, stepping away from a bound; an "
                    "explicit scheme that crosses a bound is refused."},
    {"name": "check", "in": "query", "required": False,
     "schema": {"type": "string", "enum": ["finite-difference"]},
     "description": "Also bump and revalue, and report the largest differences per key."},
]


@dataclass(frozen=True)
class SensitivityOptions:
    bump: Bump | None  # None: no bump option given
    check: str | None


def _shift(given: str) -> float:
    try:
        shift = float(given)
    except ValueError:
        shift = math.nan
    if not (math.isfinite(shift) and shift > 0):
        raise InvalidRequest(f"shift = {given!r}; use a positive number")
    return shift


def sensitivity_options(query: Mapping[str, str]) -> SensitivityOptions:
    """The options from the query string; InvalidRequest saying what to change."""
    shift, shift_type, scheme = (query.get(k) for k in BUMP_OPTIONS)
    bump = None
    if shift is not None or shift_type is not None or scheme is not None:
        bump = Bump(None if shift is None else _shift(shift), shift_type, scheme)
    return SensitivityOptions(bump, query.get("check"))


def with_query(request: Request, query: Mapping[str, str], compare: bool = False) -> Request:
    """``request`` with the query's options: its strategy, bump settings and check. For
    compare: prepared as finite differences (which take every bump setting), with no check,
    and admitted whatever strategies this server serves (compare then runs those only)."""
    if not query and not compare:
        return request  # (most requests: nothing to change, and replace() costs microseconds)
    options = sensitivity_options(query)
    if compare:
        return replace(request, strategy="finite-difference", bump=options.bump, check=None,
                       any_strategy=True)
    return replace(request, strategy=query.get("strategy", "auto"), bump=options.bump,
                   check=options.check)
