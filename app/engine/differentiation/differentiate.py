"""One entry to the mathematics: :func:`differentiate` runs a strategy at order 1 or 2, or
finite differences with any bump, and decides ``auto`` here once for both orders: forward
mode, or AUTO_FALLBACK (O(N) reverse mode) where forward mode lacks a formula for one of the
routine's operations.

Every run of a transform holds :data:`TRANSFORMS_LOCK`: PyTorch's forward-AD levels are
process-wide, not per thread, so two device workers running jvp at once corrupt each other's
tangents (seen: zeros). Launches are therefore traced one at a time; on CUDA the kernels still
run asynchronously, and the copy back to the host (which waits for them) happens outside the
lock, so devices still overlap. Compiled graphs (app.engine.compiled) are tried before this
by the runtime's executor.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from app.engine.differentiation.bumping import Bump, finite_difference
from app.engine.differentiation.problem import Derivatives, Problem
from app.engine.differentiation.second_order import SECOND_ORDER, forward2
from app.engine.differentiation.strategies import (
    AUTO_FALLBACK,
    STRATEGIES,
    lacks_forward_formula,
)

__all__ = ["TRANSFORMS_LOCK", "differentiate"]

TRANSFORMS_LOCK = threading.Lock()


def _auto(forward: Callable[[], Derivatives],
          fallback: Callable[[], Derivatives]) -> tuple[Derivatives, str]:
    try:
        return forward(), "forward"
    except NotImplementedError as exc:
        if not lacks_forward_formula(exc):
            raise
    return fallback(), AUTO_FALLBACK


def differentiate(problem: Problem, strategy: str, *, order: int = 1, cross: bool = False,
                  bump: Bump | None = None) -> tuple[Derivatives, str]:
    """The derivatives of ``problem`` by ``strategy`` (second ones keyed "a,b", every pair of
    wrt with ``cross``), and the strategy that ran. ``bump`` configures finite differences;
    without one they bump by the default. The caller holds TRANSFORMS_LOCK."""
    if strategy == "finite-difference" and (order == 2 or bump is not None):
        return finite_difference(problem, bump or Bump(), order, cross), strategy
    if order == 2:
        if strategy != "auto":
            return SECOND_ORDER[strategy](problem, cross), strategy
        return _auto(lambda: forward2(problem, cross),
                     lambda: SECOND_ORDER[AUTO_FALLBACK](problem, cross))
    if strategy != "auto":
        return STRATEGIES[strategy].run(problem), strategy
    return _auto(lambda: STRATEGIES["forward"].run(problem),
                 lambda: STRATEGIES[AUTO_FALLBACK].run(problem))
