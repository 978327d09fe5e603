"""Second derivatives (gamma, vanna, volga, cross-gammas): d²y/da db for pairs of wrt names.

Each function returns values, the first derivatives keyed by name and the second ones keyed
``"a,b"`` (app.engine.differentiation.bumping.pair_key), all (N, M). PyTorch composes its
transforms, so
every strategy here is one of its own first-order tools applied twice:

- ``forward`` (and ``auto``): forward over forward, ``jvp`` of ``jvp``. One nested pass along
  (e_a, e_b) gives y, dy/da, dy/db and d²y/da db together; a tangent of ones on a per-sample
  parameter is its own per-sample direction, since row i depends only on sample i.
- ``jacfwd``: ``jacfwd`` of ``jacfwd``, per sample under ``vmap``.
- ``vmap-grad``: reverse over reverse (``jacrev`` of ``jacrev``), per sample: no forward
  formula needed anywhere, so it is also ``auto``'s fallback (``gamma_survival``'s ``igammac``
  has none, which rules out ``torch.func.hessian``'s forward over reverse).
- ``finite-difference``: second differences (app.engine.differentiation.bumping).

``forward-dual`` cannot nest (one dual level at a time) and the O(N²) reverse strategies have
no second order here: :data:`SECOND_ORDER` lists the strategies that do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.func import jacfwd, jacrev, jvp, vmap

from app.engine.differentiation.bumping import Bump, finite_difference, pair_key, pairs
from app.engine.differentiation.evaluation import evaluate_sample, param_in_dims
from app.engine.differentiation.strategies import (
    Derivatives,
    Problem,
)
from app.engine.errors import InvalidRequest

__all__ = ["SECOND_ORDER", "forward2"]


def forward2(problem: Problem, cross: bool) -> Derivatives:
    """Forward over forward: one nested jvp per pair."""
    primals = problem.wrt_values()
    index = {name: i for i, name in enumerate(problem.wrt)}

    def f(*theta: Tensor) -> Tensor:
        return problem.evaluate(problem.varying(*theta))

    def basis(i: int) -> tuple[Tensor, ...]:
        return tuple(torch.ones_like(p) if j == i else torch.zeros_like(p)
                     for j, p in enumerate(primals))

    def nested(a: str, b: str) -> tuple[Tensor, Tensor, Tensor]:
        u = basis(index[a])

        def inner(*theta: Tensor) -> tuple[Tensor, Tensor]:
            y, du = jvp(f, theta, u)[:2]
            return y, du

        pushed = jvp(inner, primals, basis(index[b]))
        (y, du), (_, duv) = pushed[0], pushed[1]
        return y, du, duv

    values: Tensor | None = None
    out: dict[str, Tensor] = {}
    for a in problem.wrt:  # the diagonal gives the first derivatives too
        y, da, daa = nested(a, a)
        values = y if values is None else values
        out[a] = da
        if (a, a) in pairs(problem.wrt, cross):
            out[pair_key(a, a)] = daa
    for a, b in pairs(problem.wrt, cross):
        if a != b:
            out[pair_key(a, b)] = nested(a, b)[2]
    assert values is not None
    return Derivatives(values, _ordered(problem, out, cross))


def _ordered(problem: Problem, out: dict[str, Tensor], cross: bool) -> dict[str, Tensor]:
    keys = [*problem.wrt, *(pair_key(a, b) for a, b in pairs(problem.wrt, cross))]
    return {k: out[k] for k in keys}


def _per_sample2(problem: Problem, cross: bool,
                 transform: Callable[..., Callable[..., Any]]) -> Derivatives:
    """vmap over samples of ``transform`` (jacfwd or jacrev) applied twice to the one-sample
    routine."""
    rest = {k: v for k, v in problem.params.items() if k not in problem.wrt}

    def sample(theta: tuple[Tensor, ...], x: Tensor,
               others: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        y = evaluate_sample(problem.routine, x, {**others,
                                                  **dict(zip(problem.wrt, theta, strict=True))})
        return y, y

    def first(theta: tuple[Tensor, ...], x: Tensor,
              others: dict[str, Tensor]) -> tuple[Any, tuple[Any, Tensor]]:
        jac, y = transform(sample, has_aux=True)(theta, x, others)
        return jac, (jac, y)

    theta = problem.wrt_values()
    in_dims = (tuple(0 if t.dim() else None for t in theta), 0, param_in_dims(rest))
    hess, (jac, values) = vmap(transform(first, has_aux=True), in_dims=in_dims)(
        theta, problem.inputs, rest)
    index = {name: i for i, name in enumerate(problem.wrt)}
    out = {name: jac[i].reshape(values.shape) for name, i in index.items()}
    for a, b in pairs(problem.wrt, cross):
        out[pair_key(a, b)] = hess[index[a]][index[b]].reshape(values.shape)
    return Derivatives(values, out)


def _batch_jacfwd2(problem: Problem, cross: bool) -> Derivatives:
    """jacfwd of jacfwd over the whole batch, for a vectorized routine with shared
    parameters (the Jacobian with respect to a scalar is shaped like the values)."""
    if any(v.dim() for v in problem.params.values()):
        raise InvalidRequest(
            f"jacfwd at order 2 on the vectorized {problem.routine.called} takes shared "
            "parameters only; use strategy=forward")
    argnums = tuple(range(len(problem.wrt)))

    def f(*theta: Tensor) -> tuple[Tensor, Tensor]:
        y = problem.evaluate(problem.varying(*theta))
        return y, y

    def first(*theta: Tensor) -> tuple[Any, tuple[Any, Tensor]]:
        jac, y = jacfwd(f, argnums=argnums, has_aux=True)(*theta)
        return jac, (jac, y)

    hess, (jac, values) = jacfwd(first, argnums=argnums, has_aux=True)(*problem.wrt_values())
    index = {name: i for i, name in enumerate(problem.wrt)}
    out = {name: jac[i] for name, i in index.items()}
    for a, b in pairs(problem.wrt, cross):
        out[pair_key(a, b)] = hess[index[a]][index[b]]
    return Derivatives(values, out)


def jacfwd2(problem: Problem, cross: bool) -> Derivatives:
    if problem.routine.vectorized:
        return _batch_jacfwd2(problem, cross)
    return _per_sample2(problem, cross, jacfwd)


def vmap_grad2(problem: Problem, cross: bool) -> Derivatives:
    if problem.routine.vectorized:
        raise InvalidRequest(
            f"vmap-grad at order 2 needs a routine that vmaps; {problem.routine.name} is "
            "vectorized: use strategy=forward")
    return _per_sample2(problem, cross, jacrev)


SECOND_ORDER: dict[str, Callable[[Problem, bool], Derivatives]] = {
    "auto": forward2,  # resolved in differentiate2
    "forward": forward2,
    "jacfwd": jacfwd2,
    "vmap-grad": vmap_grad2,
    "finite-difference": lambda problem, cross: finite_difference(problem, Bump(), 2, cross),
}
