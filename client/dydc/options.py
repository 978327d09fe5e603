"""What a computation asks for, whichever protocol carries it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from dydc.results import Bump

__all__ = ["CHECK_STRATEGY", "Kind", "Options", "options"]

CHECK_STRATEGY = "finite-difference"


class Kind(StrEnum):
    EVALUATE = "evaluate"
    SENSITIVITIES = "sensitivities"
    COMPARE = "compare"


@dataclass(frozen=True)
class Options:
    kind: Kind
    wrt: tuple[str, ...] | None = None
    order: int = 1
    cross: bool = False
    strategy: str = "auto"
    dtype: str | None = None
    timeout_ms: float | None = None
    check: str | None = None
    bump: Bump | None = None

    @property
    def binary_capable(self) -> bool:
        """The v2 protocol carries neither comparisons, checks nor bump settings."""
        return self.kind is not Kind.COMPARE and self.check is None and self.bump is None

    def query(self) -> dict[str, str]:
        """v1's query options."""
        query: dict[str, str] = {}
        if self.kind is Kind.SENSITIVITIES:
            query["strategy"] = self.strategy
        if self.timeout_ms is not None:
            query["timeout_ms"] = repr(float(self.timeout_ms))
        if self.check is not None:
            query["check"] = self.check
        if self.bump is not None:
            query |= self.bump.query()
        return query

    @property
    def timeout_s(self) -> float | None:
        """A read timeout that outlasts the request's own deadline."""
        return None if self.timeout_ms is None else self.timeout_ms / 1e3 + 5.0


_EMPTY_WRT = "wrt is empty; name at least one parameter, or leave wrt out"
_DTYPES = ("float64", "float32")


def _wrt(wrt: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """The names, or None for the service's default; an empty list is refused here, as the
    service refuses it over JSON (v2 would read an empty ``wrt`` as no derivatives at all)."""
    if wrt is None:
        return None
    listed: list[Any] = (wrt.split(",") if isinstance(wrt, str)
                         else list(wrt) if isinstance(wrt, Iterable)
                         and not isinstance(wrt, Mapping) else [wrt])
    if not all(isinstance(w, str) for w in listed):
        raise ValueError(f"wrt is {wrt!r}; give parameter or input names, as a list "
                         "(['sigma', 'S']) or comma-separated ('sigma,S')")
    names = tuple(w.strip() for w in listed if w.strip())
    if not names:
        raise ValueError(_EMPTY_WRT)
    return names


def _check(check: str | bool | None) -> str | None:
    if check is None or check is False:
        return None
    return CHECK_STRATEGY if check is True else check


def _bump(bump: Bump | Mapping[str, Any] | None) -> Bump | None:
    if bump is None or isinstance(bump, Bump):
        return bump
    unknown = set(bump) - {"shift", "shift_type", "scheme"}
    if unknown:
        raise ValueError(f"bump has {', '.join(sorted(unknown))}; it takes shift, shift_type "
                         "and scheme")
    return Bump(**bump)


def options(kind: Kind, *, wrt: str | Sequence[str] | None = None, order: int = 1,
            cross: bool = False, strategy: str = "auto", dtype: str | None = None,
            timeout_ms: float | None = None, check: str | bool | None = None,
            bump: Bump | Mapping[str, Any] | None = None) -> Options:
    """What the caller asked for, with every check that needs no service (a bad argument is
    a ValueError, as a bad input is)."""
    if dtype is not None and dtype not in _DTYPES:  # what the client can send, either protocol
        raise ValueError(f"dtype {dtype!r}; use float64 or float32")
    return Options(kind, _wrt(wrt), order, cross, strategy, dtype, timeout_ms, _check(check),
                   _bump(bump))
