"""What each strategy can do: order 2, per-sample parameters, its cap on N.

One question, asked in two places: ``Engine.prepare`` refuses a request a strategy cannot
serve (422, naming the strategies that can), and the comparison skips that strategy with the
same reason.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from app.engine.differentiation.second_order import SECOND_ORDER
from app.engine.differentiation.strategies import STRATEGIES
from routines import Routine

__all__ = ["cap_refusal", "refusal", "supports_order2", "supports_per_sample"]


def supports_order2(strategy: str) -> bool:
    return strategy in SECOND_ORDER


def supports_per_sample(strategy: str, routine: Routine | None = None) -> bool:
    """Takes parameters with one value per sample (and so input features in wrt)."""
    if not STRATEGIES[strategy].per_sample_params:
        return False
    # jacfwd of a vectorized routine is the batch Jacobian: O(N^2) with per-sample values
    return not (strategy == "jacfwd" and routine is not None and routine.vectorized)


def _able(routine: Routine, order: int, per_sample: bool) -> list[str]:
    return [s for s in STRATEGIES if (order == 1 or supports_order2(s))
            and (not per_sample or supports_per_sample(s, routine))]


def refusal(strategy: str, routine: Routine, *, order: int, per_sample: bool) -> str | None:
    """Why ``strategy`` cannot serve this request, naming the strategies that can; None if it
    can."""
    if order == 2 and not supports_order2(strategy):
        why = (" (its dual-number levels cannot nest)" if strategy == "forward-dual" else "")
        return (f"strategy {strategy} cannot compute second derivatives{why}; for order 2 use "
                f"one of: {', '.join(_able(routine, 2, per_sample))}")
    if per_sample and not supports_per_sample(strategy, routine):
        return (f"strategy {strategy} differentiates shared parameters only, and this request "
                "has per-sample parameters or input features in wrt; use one of: "
                f"{', '.join(_able(routine, order, True))}")
    return None


def cap_refusal(strategy: str, n: int, caps: Mapping[str, tuple[str, int]],
                enabled: Collection[str] | None = None) -> str | None:
    """Why N is too large for ``strategy``, naming its setting; None if it is not. The
    advice names forward mode only where the server serves it (``enabled``: the strategies
    DYDC_STRATEGIES serves; None, all)."""
    if strategy not in caps:
        return None
    setting, cap = caps[strategy]
    if n <= cap:
        return None
    forward = enabled is None or "forward" in enabled
    return (f"strategy {strategy} is capped at N = {cap} samples (DYDC_{setting.upper()}); "
            f"this request has N = {n}. "
            + ("Use strategy=forward (one pass, no cap), or split the batch" if forward
               else "Split the batch"))
