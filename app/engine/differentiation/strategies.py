"""How dy/dC is computed: every strategy returns values (N, M) and one (N, M) derivative per
differentiated parameter, the same numbers to rounding (finite differences to their own
accuracy). Each is a plain function of a :class:`Problem`; none knows about HTTP or queues.

Each strategy also states its :class:`Work` for a request of N samples, M outputs and P
parameters, which the engine prices before queueing it (app.engine.runtime.admission). The O(N^2)
strategies run in slices of output rows (``steps``), yielding the fraction done after each,
so that the worker can stop them at a slice boundary and serve other work in between; their
``run`` is the same steps run to the end.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor
from torch.func import grad, jacfwd, jacrev, jvp, vmap

from app.engine.differentiation.bumping import Bump
from app.engine.differentiation.bumping import finite_difference as bump_and_revalue
from app.engine.differentiation.evaluation import evaluate_sample, param_in_dims
from app.engine.differentiation.problem import Derivatives, Problem
from app.engine.errors import InvalidRequest
from app.strategy_names import STRATEGY_NAMES

__all__ = [
    "AUTO_FALLBACK",
    "STRATEGIES",
    "Derivatives",
    "Problem",
    "Steps",
    "Strategy",
    "Work",
    "drain",
    "lacks_forward_formula",
]

T = TypeVar("T")
# What ``auto`` runs where forward mode lacks a formula: O(N) reverse mode, no cap (first and
# second order alike)
AUTO_FALLBACK = "vmap-grad"


@dataclass(frozen=True)
class Work:
    """What a request costs a strategy, in the units the cost model prices: passes over the
    routine (each pays its fixed overhead) and sample evaluations (each pays its time per
    sample). The factors are this machine's measured ratios to plain evaluation, rounded up
    (bench/results/strategies.md); the engine corrects them by what jobs actually took."""

    passes: float
    samples: float


# (N, M, P) -> Work
Complexity = Callable[[int, int, int], Work]
# The steps of a sliced strategy: yields the fraction done after each slice, returns the result.
Steps = Generator[float, None, Derivatives]


@dataclass(frozen=True)
class Strategy:
    name: str
    mode: str
    cost: str
    description: str
    run: Callable[[Problem], Derivatives]
    work: Complexity
    cap_setting: str | None = None  # the Settings field that caps N, if any
    batchable: bool = False  # may coalesce requests with per-sample parameters
    # O(N^2) strategies: the same computation in slices of about ``seconds`` each
    steps: Callable[[Problem, float], Steps] | None = None
    per_sample_params: bool = True  # takes a parameter with one value per sample


def lacks_forward_formula(exc: BaseException) -> bool:
    """True when forward mode failed because an operation has no forward-AD formula."""
    return isinstance(exc, NotImplementedError) and "forward AD" in str(exc)


def _per_param(problem: Problem, rows: tuple[Tensor, ...] | Tensor) -> dict[str, Tensor]:
    return {name: rows[i] for i, name in enumerate(problem.wrt)}


def _require_shared(problem: Problem, strategy: str) -> None:
    if any(v.dim() for v in problem.params.values()):
        raise InvalidRequest(f"{strategy} differentiates shared parameters only")


# -- forward mode ------------------------------------------------------------------------------


def forward(problem: Problem) -> Derivatives:
    """torch.func.jvp: one pass gives values and the tangent dy/dC for the whole batch."""
    primals = problem.wrt_values()

    def f(*theta: Tensor) -> Tensor:
        return problem.evaluate(problem.varying(*theta))

    def push(*tangents: Tensor) -> tuple[Tensor, Tensor]:
        values, tangent = jvp(f, primals, tangents)[:2]
        return values, tangent

    def basis(i: int) -> tuple[Tensor, ...]:
        return tuple(torch.ones_like(p) if j == i else torch.zeros_like(p)
                     for j, p in enumerate(primals))

    if len(primals) == 1:
        values, tangent = push(*basis(0))
        return Derivatives(values, {problem.wrt[0]: tangent})
    if problem.routine.vectorized:  # its code may not survive vmap: one jvp per parameter
        pushed = [push(*basis(i)) for i in range(len(primals))]
        return Derivatives(pushed[0][0], _per_param(problem, tuple(t for _, t in pushed)))
    # Several parameters: jacfwd over the parameter vector, i.e. jvp vmapped over the basis.
    tangents = tuple(torch.stack([basis(i)[j] for i in range(len(primals))])
                     for j in range(len(primals)))
    values, stacked = vmap(push)(*tangents)
    return Derivatives(values[0], _per_param(problem, stacked.unbind(0)))


def forward_dual(problem: Problem) -> Derivatives:
    """torch.autograd.forward_ad: a dual number C + 1·ε, read back with unpack_dual."""
    values: Tensor | None = None
    tangents: dict[str, Tensor] = {}
    with fwAD.dual_level():
        for name in problem.wrt:
            p = problem.params[name]
            dual = fwAD.make_dual(p, torch.ones_like(p))  # type: ignore[no-untyped-call]
            out = problem.evaluate({**problem.params, name: dual})
            primal, tangent = fwAD.unpack_dual(out)  # type: ignore[no-untyped-call]
            values = primal if values is None else values
            tangents[name] = torch.zeros_like(primal) if tangent is None else tangent
    assert values is not None
    return Derivatives(values.clone(), {k: v.clone() for k, v in tangents.items()})


# -- reverse mode ------------------------------------------------------------------------------


def _leaves(problem: Problem) -> tuple[Tensor, ...]:
    return tuple(v.detach().clone().requires_grad_(True) for v in problem.wrt_values())


def _grads(outputs: Tensor, leaves: tuple[Tensor, ...], **kwargs: object) -> tuple[Tensor, ...]:
    """autograd.grad that answers zero for parameters the output does not depend on."""
    if not outputs.requires_grad:
        return tuple(torch.zeros_like(leaf) for leaf in leaves)
    got = torch.autograd.grad(outputs, leaves, allow_unused=True, **kwargs)  # type: ignore[call-overload]
    return tuple(torch.zeros_like(leaf) if g is None else g
                 for g, leaf in zip(got, leaves, strict=True))


def _in_slices(total: int, seconds: float, first: int,
               work: Callable[[int, int], None]) -> Iterator[float]:
    """``work(a, b)`` over consecutive ranges covering range(total), each sized from the time
    the previous one took to last about ``seconds``; yields the fraction done after each."""
    start, size = 0, (first if math.isfinite(seconds) else total)
    while start < total:
        end = min(total, start + size)
        began = time.perf_counter()
        work(start, end)
        took = time.perf_counter() - began
        start = end
        if start < total:
            size = max(1, min(4 * size, int(size * seconds / took))) if took > 0 else 4 * size
        yield start / total


def _unit_rows(a: int, b: int, total: int, like: Tensor) -> Tensor:
    """Rows a..b-1 of the total x total identity."""
    rows = torch.zeros(b - a, total, dtype=like.dtype, device=like.device)
    rows[torch.arange(b - a), torch.arange(a, b)] = 1
    return rows


def drain(steps: Generator[Any, None, T]) -> T:
    """Run steps (a generator that yields its progress) to the end; their result."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result: T = done.value
            return result


def _whole(steps: Callable[[Problem, float], Steps]) -> Callable[[Problem], Derivatives]:
    def run(problem: Problem) -> Derivatives:
        return drain(steps(problem, math.inf))

    return run


def reverse_loop_steps(problem: Problem, seconds: float) -> Steps:
    """The naive baseline: one autograd.grad call per output element, O(N^2) in all."""
    _require_shared(problem, "reverse-loop")
    leaves = _leaves(problem)
    values = problem.evaluate(problem.varying(*leaves))
    flat = values.reshape(-1)
    rows: list[tuple[Tensor, ...]] = []

    def work(a: int, b: int) -> None:
        rows.extend(_grads(flat[i], leaves, retain_graph=True) for i in range(a, b))

    yield from _in_slices(flat.numel(), seconds, 1, work)
    derivs = tuple(
        torch.stack([row[j] for row in rows]).reshape(values.shape).to(values.dtype)
        for j in range(len(leaves))
    ) if rows else tuple(torch.zeros_like(values) for _ in leaves)
    return Derivatives(values.detach(), _per_param(problem, derivs))


def reverse_batched_steps(problem: Problem, seconds: float) -> Steps:
    """autograd.grad with is_grads_batched over rows of the identity: vmapped backward
    passes, a slice of rows at a time (one call over all N x M rows when not sliced)."""
    _require_shared(problem, "reverse-batched")
    leaves = _leaves(problem)
    values = problem.evaluate(problem.varying(*leaves))
    flat = values.reshape(-1)
    parts: list[tuple[Tensor, ...]] = []

    def work(a: int, b: int) -> None:
        got = _grads(flat, leaves, grad_outputs=_unit_rows(a, b, flat.numel(), flat),
                     is_grads_batched=True, retain_graph=True)
        parts.append(tuple(g.expand(b - a) for g in got))

    yield from _in_slices(flat.numel(), seconds, 16, work)
    derivs = tuple(torch.cat([p[j] for p in parts]).reshape(values.shape)
                   for j in range(len(leaves)))
    return Derivatives(values.detach(), _per_param(problem, derivs))


def jacrev_steps(problem: Problem, seconds: float) -> Steps:
    """torch.func.jacrev of the batch output, as jacrev computes it (vjp, then vmap over rows
    of the identity), a slice of rows at a time."""
    _require_shared(problem, "jacrev")

    def f(*theta: Tensor) -> Tensor:
        return problem.evaluate(problem.varying(*theta))

    pulled = torch.func.vjp(f, *problem.wrt_values())
    values, vjp_fn = pulled[0], pulled[1]
    total = values.numel()
    parts: list[tuple[Tensor, ...]] = []

    def work(a: int, b: int) -> None:
        rows = _unit_rows(a, b, total, values).reshape(b - a, *values.shape)
        parts.append(tuple(vmap(vjp_fn)(rows)))

    yield from _in_slices(total, seconds, 16, work)
    derivs = tuple(torch.cat([p[j] for p in parts]).reshape(values.shape)
                   for j in range(len(problem.wrt)))
    return Derivatives(values.detach(), _per_param(problem, derivs))


def vmap_grad(problem: Problem) -> Derivatives:
    """Per-sample reverse mode: vmap over samples of grad (jacrev when M > 1).

    A vectorized routine cannot be vmapped; it gets the same per-sample gradients from one
    backward pass per output, each sample holding its own copy of the parameters.
    """
    if problem.routine.vectorized:
        return _per_sample_copies(problem)
    return _per_sample(problem, grad if len(problem.routine.outputs) == 1 else jacrev)


def _per_sample(problem: Problem, transform: Callable[..., Any]) -> Derivatives:
    """vmap over samples of ``transform`` (grad, jacrev or jacfwd) of the one-sample routine;
    parameters may be shared or per-sample."""
    scalar = transform is grad
    rest = {k: v for k, v in problem.params.items() if k not in problem.wrt}

    def sample(theta: tuple[Tensor, ...], x: Tensor, others: dict[str, Tensor]):  # type: ignore[no-untyped-def]
        varied = dict(zip(problem.wrt, theta, strict=True))
        y = evaluate_sample(problem.routine, x, {**others, **varied})
        return (y[0], y) if scalar else (y, y)

    theta = problem.wrt_values()
    in_dims = (tuple(0 if t.dim() else None for t in theta), 0, param_in_dims(rest))
    d, values = vmap(transform(sample, has_aux=True), in_dims=in_dims)(
        theta, problem.inputs, rest)
    derivs = tuple(g.reshape(values.shape) for g in d)
    return Derivatives(values, _per_param(problem, derivs))


def _per_sample_copies(problem: Problem) -> Derivatives:
    """Row i depends only on sample i, so with per-sample parameter copies the gradient of
    the column sum is the vector of per-sample derivatives: M backward passes in all."""
    n = problem.n
    leaves = tuple(v.detach().expand(n).clone().requires_grad_(True)
                   for v in problem.wrt_values())
    values = problem.evaluate(problem.varying(*leaves))
    columns = [
        _grads(values[:, m].sum(), leaves, retain_graph=m + 1 < values.shape[1])
        for m in range(values.shape[1])
    ]
    derivs = tuple(
        torch.stack([col[j].expand(n) for col in columns], dim=1).to(values.dtype)
        for j in range(len(leaves))
    )
    return Derivatives(values.detach(), _per_param(problem, derivs))


# -- full Jacobians ----------------------------------------------------------------------------


def jacobian_forward(problem: Problem) -> Derivatives:
    """torch.func.jacfwd of the batch output (per-sample Jacobians for a coalesced batch)."""
    if not problem.routine.vectorized and any(v.dim() for v in problem.params.values()):
        return _per_sample(problem, jacfwd)
    _require_shared(problem, "jacfwd")

    def f(*theta: Tensor) -> tuple[Tensor, Tensor]:
        y = problem.evaluate(problem.varying(*theta))
        return y, y

    argnums = tuple(range(len(problem.wrt)))
    jac, values = jacfwd(f, argnums=argnums, has_aux=True)(*problem.wrt_values())
    return Derivatives(values, _per_param(problem, tuple(jac)))


# -- finite differences ------------------------------------------------------------------------


def finite_difference(problem: Problem) -> Derivatives:
    """Central differences, h = eps^(1/3) max(1, |C|); one-sided second order at a bound,
    stepping away from it, so that the routine never sees a parameter outside its bounds.
    Other bumps, and second differences: app.engine.differentiation.bumping."""
    return bump_and_revalue(problem, Bump())


def _with_fallback(problem: Problem) -> Derivatives:
    raise AssertionError("auto is resolved by the engine, which names the strategy that ran")


def _linear(passes: float, samples: float) -> Complexity:
    """Work proportional to N: ``passes`` and ``samples`` per sample-evaluation, per parameter."""
    return lambda n, m, p: Work(passes * p, samples * n * p)


def _quadratic(passes_per_row: float, samples: float) -> Complexity:
    """One pass over all N samples per output element (N x M of them): O(N^2)."""
    return lambda n, m, p: Work(1 + passes_per_row * n * m, n + samples * n * n * m)


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in [
        Strategy("auto", "forward", "1 forward pass per parameter (falls back to reverse mode)",
                 "forward mode; falls back to vmap-grad when an operation has no "
                 "forward-mode formula",
                 _with_fallback, _linear(2, 4), batchable=True),
        Strategy("forward", "forward", "1 forward pass per parameter, O(N)",
                 "torch.func.jvp (jacfwd over the parameter vector for several)",
                 forward, _linear(2, 4), batchable=True),
        Strategy("forward-dual", "forward", "1 forward pass per parameter, O(N)",
                 "dual numbers with torch.autograd.forward_ad make_dual / unpack_dual",
                 forward_dual, _linear(2, 6), batchable=True),
        Strategy("reverse-loop", "reverse", "N x M backward passes, O(N^2)",
                 "one torch.autograd.grad call per output element: the naive baseline",
                 _whole(reverse_loop_steps), _quadratic(1, 4), cap_setting="reverse_loop_max_n",
                 steps=reverse_loop_steps, per_sample_params=False),
        Strategy("reverse-batched", "reverse", "N x M vmapped backward passes, O(N^2) memory",
                 "torch.autograd.grad(is_grads_batched=True) with identity grad_outputs",
                 _whole(reverse_batched_steps), _quadratic(0.01, 16),
                 cap_setting="reverse_batched_max_n", steps=reverse_batched_steps,
                 per_sample_params=False),
        Strategy("vmap-grad", "reverse", "1 backward pass per sample, vmapped, O(N)",
                 "torch.func.vmap(torch.func.grad) over samples (jacrev when M > 1)",
                 vmap_grad, lambda n, m, p: Work(3, 6 * n * m), batchable=True),
        Strategy("jacrev", "reverse", "N x M vmapped backward passes, O(N^2) memory",
                 "torch.func.jacrev: the full Jacobian of the batch output",
                 _whole(jacrev_steps), _quadratic(0.01, 16), cap_setting="jacrev_max_n",
                 steps=jacrev_steps, per_sample_params=False),
        Strategy("jacfwd", "forward", "1 forward pass per parameter, vmapped, O(N)",
                 "torch.func.jacfwd: the full Jacobian of the batch output",
                 jacobian_forward, _linear(3, 6), batchable=True),
        Strategy("finite-difference", "numeric", "2 evaluations per parameter, O(N)",
                 "central differences with h = eps^(1/3) max(1, |C|); ~1e-10 relative in "
                 "float64, ~1e-5 in float32, where the function varies slowly over h (a "
                 "step that is large against the function's scale, e.g. softmax at scores "
                 "near 100 in float32, costs far more) (bump settings: shift, shift_type, "
                 "scheme)",
                 finite_difference, lambda n, m, p: Work(1 + 2 * p, n * (1 + 2 * p))),
    ]
}
# app.strategy_names is the one list of the names, read by app.config without the engine
if tuple(STRATEGIES) != STRATEGY_NAMES:
    raise ImportError("app.strategy_names.STRATEGY_NAMES must be the engine's strategies, in "
                      f"its order: {tuple(STRATEGIES)}")
