"""Bump and revalue: derivatives by finite differences, with the bump configured as risk
systems configure it (ORE's ShiftType, ShiftSize and ShiftScheme).

Why by hand: ``torch.autograd.gradcheck`` compares against finite differences but does not
return them, and no maintained library does bumps with shift types, schemes and per-sample
bounds on batched torch tensors; the formulas are a few lines each.

Every formula works element by element, so a parameter may be shared (0-d) or hold one value
per sample (N,), and an input feature is bumped like a per-sample parameter: row i of a
routine depends only on sample i, so bumping every sample at once gives each its own
difference quotient.

- ``shift``: h, absolute or relative (h = shift·|value|). Left out with ``shift_type`` left
  out too, h = eps^(1/3)·max(1, |v|) for first derivatives and eps^(1/4)·max(1, |v|) for second
  ones (as before this option existed) (the steps that balance
  truncation against rounding: about 1e-10 and 1e-7 relative in float64).
- ``scheme``: central (default), forward or backward. Left out, a central bump that would
  cross a parameter's bound steps away from it instead (a one-sided difference of second
  order); chosen explicitly, a bump that crosses a bound is refused. The echo says what ran,
  so it names the one-sided scheme where a bump stepped away.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from app.engine.differentiation.problem import Derivatives, Problem
from app.engine.errors import InvalidRequest

__all__ = [
    "SCHEMES",
    "SHIFT_TYPES",
    "Bump",
    "default_shift",
    "derivative_name",
    "finite_difference",
    "pair_key",
    "pairs",
    "validate_bump",
]

SHIFT_TYPES = ("absolute", "relative")
SCHEMES = ("central", "forward", "backward")


def pairs(wrt: tuple[str, ...], cross: bool) -> list[tuple[str, str]]:
    """The second derivatives asked for: (a, a) for each a, or every unordered pair in wrt
    order."""
    if not cross:
        return [(a, a) for a in wrt]
    return [(a, b) for i, a in enumerate(wrt) for b in wrt[i:]]


def pair_key(a: str, b: str) -> str:
    return f"{a},{b}"


def derivative_name(key: str) -> str:
    """A derivative's key as a person reads it: dy/dsigma, or d2y/dS dsigma for the second
    derivative keyed "S,sigma"."""
    if "," not in key:
        return f"dy/d{key}"
    a, b = key.split(",")
    return f"d2y/d{a}2" if a == b else f"d2y/d{a} d{b}"


def default_shift(dtype: torch.dtype, order: int) -> float:
    """eps^(1/3) for first differences, eps^(1/4) for second ones."""
    return float(torch.finfo(dtype).eps ** (1 / 3 if order == 1 else 1 / 4))


@dataclass(frozen=True)
class Bump:
    """The request's bump settings; None means the default.

    Which scheme ran depends on the values and bounds, which the settings do not hold:
    ``validate_bump`` returns the bump with ``ran``, per wrt entry the schemes its steps take
    (the settings are compared and hashed without it), so that the echo can say it.
    """

    shift: float | None = None
    shift_type: str | None = None
    scheme: str | None = None
    ran: tuple[tuple[str, tuple[str, ...]], ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.shift is not None and not (math.isfinite(self.shift) and self.shift > 0):
            raise InvalidRequest(f"shift = {self.shift}; use a positive number")
        if self.shift_type is not None and self.shift_type not in SHIFT_TYPES:
            raise InvalidRequest(f"shift_type = {self.shift_type!r}; use absolute or relative")
        if self.scheme is not None and self.scheme not in SCHEMES:
            raise InvalidRequest(f"scheme = {self.scheme!r}; use central, forward or backward")

    def echo(self, dtype: torch.dtype, order: int) -> dict[str, object]:
        """What ran: the shift (the default's base for the highest order asked), its type, the
        scheme and, once validated, ``schemes``: per wrt entry the schemes its steps took.
        ``scheme`` is central only where every step was; else the first one-sided scheme in
        ``schemes`` (a default bump that stepped away from a bound somewhere)."""
        shift = self.shift if self.shift is not None else default_shift(dtype, order)
        one_sided = [s for _, schemes in self.ran for s in schemes if s != "central"]
        doc: dict[str, object] = {
            "shift": shift, "shift_type": self.shift_type or "absolute",
            "scheme": one_sided[0] if one_sided else self.scheme or "central"}
        if self.ran:
            doc["schemes"] = {name: list(schemes) for name, schemes in self.ran}
        return doc


# -- steps -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Steps:
    """Per element, the offsets of the two bumped points from the value: (+h, -h) central,
    (s, 2s) one-sided second order, or (s, 0) a plain forward or backward difference."""

    p: Tensor
    q: Tensor
    central: Tensor  # bool: p, q = +h, -h
    schemes: tuple[str, ...]  # those taken by some element, in SCHEMES order


def _where(name: str, c: Tensor, index: int) -> str:
    return f"{name}[{index}]" if c.dim() else name


def _steps(problem: Problem, name: str, bump: Bump, order: int, two_point: bool) -> _Steps:
    """The bump of one wrt name, element by element; InvalidRequest naming the element when
    the settings cannot be honoured there."""
    c = problem.params[name]
    where = _label(problem, name)
    shift = default_shift(c.dtype, order) if bump.shift is None else bump.shift
    h = _step_size(c, where, bump, shift)
    low, high = _bounds(problem, name)
    reach = 1 if two_point or order == 1 else 2  # how many steps of h the one-sided bump takes
    scheme = bump.scheme
    if scheme is None:  # central, stepping away from a bound
        up = torch.zeros_like(c, dtype=torch.bool) if low is None else c - h < low
        down = torch.zeros_like(c, dtype=torch.bool) if high is None else c + h > high
        sign = torch.where(up, 1.0, torch.where(down, -1.0, 0.0)).to(c.dtype)
    else:
        sign = torch.full_like(c, {"central": 0.0, "forward": 1.0, "backward": -1.0}[scheme])
        reaches = {"central": (h, h), "forward": (0 * h, reach * h),
                   "backward": (reach * h, 0 * h)}[scheme]
        _refuse_crossing(c, where, scheme, h, reaches, low, high)
    central = sign == 0
    s = sign * h
    p = torch.where(central, (c + h) - c, (c + s) - c)  # the steps as represented
    far = 0 * s if two_point else (c + 2 * s) - c
    q = torch.where(central, (c - h) - c, far)
    # a message names h as asked, where the dtype holds it as inf (shift=1e39 in float32)
    asked = h if bool(torch.isfinite(h).all()) else _step_size(c.double(), where, bump, shift)
    _refuse_lost_steps(c, where, asked, p, q if not two_point else p)
    taken = (central, sign > 0, sign < 0)
    return _Steps(p, q, central, tuple(kind for kind, mask in zip(SCHEMES, taken, strict=True)
                                       if bool(mask.any())))


def _step_size(c: Tensor, where: str, bump: Bump, shift: float) -> Tensor:
    """h per element, in c's dtype."""
    if bump.shift is None and bump.shift_type is None:  # the default, as before
        return shift * torch.clamp(c.abs(), min=1.0)
    if bump.shift_type != "relative":
        return shift * torch.ones_like(c)  # inf past the dtype's range (full_like raises)
    h = shift * c.abs()
    zero = h == 0
    if bool(zero.any()):
        i = int(zero.reshape(-1).nonzero()[0, 0]) if c.dim() else 0
        raise InvalidRequest(
            f"{_where(where, c, i)} is 0, where a relative shift is no bump at all; use "
            "shift_type=absolute"
        )
    return h


def _refuse_lost_steps(c: Tensor, where: str, h: Tensor, p: Tensor, q: Tensor) -> None:
    """A step that the value's precision swallows (c + h == c: a quotient of 0 by 0), or a
    point (c + h, c + 2h) or span (p - q, 2h when central) of the stencil that overflows, is
    the bump's fault, said as such, not the routine's: an infinite span divides the difference
    to 0, a derivative of 0 answered as if it were one."""
    dtype = str(c.dtype).removeprefix("torch.")
    largest = f"the largest {dtype} ({torch.finfo(c.dtype).max:.6e})"
    for bad, what in (
            (~(torch.isfinite(p) & torch.isfinite(q)),
             f"overflows: a bumped value is beyond {largest}"),
            (~torch.isfinite(p - q), f"overflows: the difference's span 2h is beyond {largest}"),
            ((p == 0) | (q == 0), "does not move it")):
        if bool(bad.any()):
            i = int(bad.reshape(-1).nonzero()[0, 0]) if c.dim() else 0
            value, step = float(c.reshape(-1)[i]), float(h.reshape(-1)[i])
            advice = "a smaller shift" if what != "does not move it" else (
                f"a larger shift: in {dtype} a bump must be above the value's last digit")
            raise InvalidRequest(
                f"{_where(where, c, i)} = {value}: a bump of h = {step:g} {what}; use {advice}")


def _refuse_crossing(c: Tensor, where: str, scheme: str, h: Tensor,
                     reaches: tuple[Tensor, Tensor], low: float | None,
                     high: float | None) -> None:
    below, above = reaches
    for bound, crossed, side in ((low, c - below, "lower"), (high, c + above, "upper")):
        if bound is None:
            continue
        bad = crossed < bound if side == "lower" else crossed > bound
        if bool(bad.any()):
            i = int(bad.reshape(-1).nonzero()[0, 0]) if c.dim() else 0
            value = float(c.reshape(-1)[i])
            step = float(h.reshape(-1)[i])
            raise InvalidRequest(
                f"{_where(where, c, i)} = {value}: a {scheme} bump of h = {step:g} crosses its "
                f"{side} bound {bound}; use another scheme or a smaller shift, or leave scheme "
                "unset to step away from the bound"
            )


def _label(problem: Problem, name: str) -> str:
    """How a message names a wrt entry: params.sigma, or the input feature S."""
    return f"input {name}" if name in problem.routine.inputs else f"params.{name}"


def _bounds(problem: Problem, name: str) -> tuple[float | None, float | None]:
    return problem.routine.param(name).bounds or (None, None)


def validate_bump(problem: Problem, bump: Bump, order: int) -> Bump:
    """``bump`` with the schemes each wrt entry's steps take, at every order asked (for its
    echo); InvalidRequest unless every entry can be bumped as asked."""
    two_point = bump.scheme in ("forward", "backward")
    ran = []
    for name in problem.wrt:
        taken = set(_steps(problem, name, bump, 1, two_point).schemes)
        if order == 2:
            taken |= set(_steps(problem, name, bump, 2, False).schemes)
        ran.append((name, tuple(s for s in SCHEMES if s in taken)))
    return replace(bump, ran=tuple(ran))


# -- difference quotients ----------------------------------------------------------------------


def _first(f0: Tensor, fp: Tensor, fq: Tensor, st: _Steps, two_point: bool) -> Tensor:
    """Through the points 0, p, q: three-point (central, or one-sided of second order), or
    two-point (f(p) - f(0)) / p."""
    p, q = _col(st.p), _col(st.q)
    if two_point:
        return (fp - f0) / p
    # as differences from f0, whose weights are exactly those of fp and fq (a function
    # that ignores the parameter gives exactly 0), divided one factor at a time: p q
    # overflows from |h| ~ 1.3e154 (1.8e19 in float32), which made every weight 0
    return (q / p / (q - p)) * (fp - f0) - (p / q / (q - p)) * (fq - f0)


def _second(f0: Tensor, fp: Tensor, fq: Tensor, st: _Steps) -> Tensor:
    """The second derivative through the points 0, p, q (central: (f+ - 2 f0 + f-) / h^2;
    forward: (f(2h) - 2 f(h) + f0) / h^2)."""
    p, q = _col(st.p), _col(st.q)
    return 2 * ((fp - f0) / p / (p - q) + (fq - f0) / q / (q - p))


def _col(t: Tensor) -> Tensor:
    """A per-sample step (N,) against outputs (N, M); a shared one stays 0-d."""
    return t.unsqueeze(-1) if t.dim() else t


def finite_difference(problem: Problem, bump: Bump, order: int = 1,
                      cross: bool = False) -> Derivatives:
    """Values, first derivatives and, at order 2, second derivatives keyed "a,b"."""
    values = problem.evaluate()
    params = problem.params

    def at(**moved: Tensor) -> Tensor:
        return problem.evaluate({**params, **{k: params[k] + v for k, v in moved.items()}})

    two_point = bump.scheme in ("forward", "backward")
    out: dict[str, Tensor] = {}
    for name in problem.wrt:
        st = _steps(problem, name, bump, 1, two_point)
        fq = values if two_point else at(**{name: st.q})
        out[name] = _first(values, at(**{name: st.p}), fq, st, two_point)
    if order == 2:
        steps = {name: _steps(problem, name, bump, 2, False) for name in problem.wrt}
        for a, b in pairs(problem.wrt, cross):
            out[pair_key(a, b)] = (_diagonal(values, at, a, steps[a]) if a == b
                                   else _mixed(at, a, b, steps[a], steps[b]))
    return Derivatives(values, out)


def _diagonal(f0: Tensor, at: Callable[..., Tensor], name: str, st: _Steps) -> Tensor:
    return _second(f0, at(**{name: st.p}), at(**{name: st.q}), st)


def _mixed(at: Callable[..., Tensor], a: str, b: str, sa: _Steps, sb: _Steps) -> Tensor:
    """(F(p,p) - F(p,q) - F(q,p) + F(q,q)) / ((pa - qa)(pb - qb)), with one-sided bumps taking
    q = 0: central in both is the usual four-point formula, forward in both
    (F(h,h) - F(h,0) - F(0,h) + F(0,0)) / (ha hb)."""
    qa = torch.where(sa.central, sa.q, 0 * sa.q)
    qb = torch.where(sb.central, sb.q, 0 * sb.q)
    corners = [at(**{a: da, b: db}) for da, db in
               ((sa.p, sb.p), (sa.p, qb), (qa, sb.p), (qa, qb))]
    return (corners[0] - corners[1] - corners[2] + corners[3]) / _col(sa.p - qa) / _col(
        sb.p - qb)
