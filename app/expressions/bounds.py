"""The language's bounds, each a setting (app.config) with the variable that raises it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.config import Settings

__all__ = ["Bounds"]


@dataclass(frozen=True)
class Bounds:
    """How large an expression may be. The defaults are the settings' defaults."""

    max_chars: int = 4096  # DYDC_EXPRESSION_MAX_CHARS
    max_nodes: int = 1000  # DYDC_EXPRESSION_MAX_NODES
    max_depth: int = 64  # DYDC_EXPRESSION_MAX_DEPTH
    max_ode_steps: int = 10_000  # DYDC_EXPRESSION_MAX_ODE_STEPS
    max_exponent: float = 64.0  # DYDC_EXPRESSION_MAX_EXPONENT: a literal exponent in ** or pow

    @classmethod
    def from_settings(cls, settings: Settings) -> Bounds:
        return cls(
            max_chars=settings.expression_max_chars,
            max_nodes=settings.expression_max_nodes,
            max_depth=settings.expression_max_depth,
            max_ode_steps=settings.expression_max_ode_steps,
            max_exponent=settings.expression_max_exponent,
        )
