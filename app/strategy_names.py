"""The names of the differentiation strategies, in the engine's order, importable without the
engine (and so without torch): app.config checks DYDC_STRATEGIES against them at start-up.

The engine's table (app.engine.differentiation.strategies.STRATEGIES) describes each one and
refuses to load when its names are not these, in this order.
"""

from __future__ import annotations

__all__ = ["STRATEGY_NAMES"]

STRATEGY_NAMES = ("auto", "forward", "forward-dual", "reverse-loop", "reverse-batched",
                  "vmap-grad", "jacrev", "jacfwd", "finite-difference")
