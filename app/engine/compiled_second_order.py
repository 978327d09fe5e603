"""Forward over forward through torch.compile, for large launches at order 2.

Eager nested ``jvp`` carries three tangents beside every value and pays PyTorch's per-operation
overhead on each: 5-8x plain evaluation at N >= 1e5 on the CPU (bench/bench_second_order.py).
Forward over forward is traced once into a graph of plain tensor
operations for any batch size (app.engine.tracing) and Inductor fuses it into one pass that
computes values, first and second derivatives together, as app.engine.compiled does for
order 1. That module is left alone (its graphs are keyed and rolled for order 1); this one
takes the same switch and sizes from it, so ``DYDC_COMPILE`` and ``DYDC_COMPILE_MIN_SAMPLES``
hold for both orders.

Kept simple on purpose: no loop rolling (a routine whose nested forward mode traces to more
than :data:`MAX_OPERATIONS` operations stays eager), parameters only (an input feature in wrt
runs eagerly), and a graph that cannot be built or disagrees with eager forward over forward
on its first samples is refused for good.
"""

from __future__ import annotations

import itertools
import logging
import threading
import weakref
from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import jvp

from app import metrics
from app.engine.bumping import pair_key, pairs
from app.engine.compiled import CompiledForward
from app.engine.second_order import forward2
from app.engine.strategies import Derivatives, Problem, forward
from app.engine.tracing import TRACE_N, trace

__all__ = ["MAX_OPERATIONS", "CompiledSecondOrder", "for_settings"]

log = logging.getLogger(__name__)

MAX_OPERATIONS = 6_000  # nested forward mode larger than this is not compiled
_CHECK_N = 13
_Key = tuple[str, tuple[str, ...], bool, torch.dtype, torch.device, tuple[tuple[str, bool], ...]]
_Graph = Callable[[Tensor, dict[str, Tensor]], tuple[Tensor, ...]]
_Columns = _Graph  # a function of inputs as columns (D, N) and the parameters


def _key(problem: Problem, cross: bool) -> _Key:
    layout = tuple((name, bool(v.dim())) for name, v in problem.params.items())
    return (problem.routine.name, problem.wrt, cross, problem.inputs.dtype,
            problem.inputs.device, layout)


def _keys(problem: Problem, cross: bool) -> list[str]:
    return [*problem.wrt, *(pair_key(a, b) for a, b in pairs(problem.wrt, cross))]


def _first_by_columns(problem: Problem) -> _Columns:
    """Values and dy/da for each a in wrt, from inputs given as columns (D, N)."""
    routine, wrt = problem.routine, problem.wrt

    def run(columns: Tensor, params: dict[str, Tensor]) -> tuple[Tensor, ...]:
        got = forward(Problem(routine, columns.t(), params, wrt))
        return (got.values, *(got.derivatives[name] for name in wrt))

    return run


def _second_by_columns(problem: Problem, cross: bool, first: _Columns) -> _Columns:
    """Values, first and second derivatives: one jvp of the traced first order per direction
    b, whose tangents are d2y/da db for every a (the pairs with a before b are kept)."""
    wrt = problem.wrt
    index = {name: i for i, name in enumerate(wrt)}
    wanted = pairs(wrt, cross)

    def run(columns: Tensor, params: dict[str, Tensor]) -> tuple[Tensor, ...]:
        second: dict[tuple[str, str], Tensor] = {}
        primal: tuple[Tensor, ...] = ()
        for b in dict.fromkeys(b for _, b in wanted):
            along = {k: torch.ones_like(v) if k == b else torch.zeros_like(v)
                     for k, v in params.items()}
            pushed = jvp(lambda p: first(columns, p), (params,), (along,))
            primal, tangent = pushed[0], pushed[1]
            for a, b2 in wanted:
                if b2 == b:
                    second[(a, b)] = tangent[1 + index[a]]
        return (*primal, *(second[pair] for pair in wanted))

    return run


def _arguments(problem: Problem, n: int | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """A graph's arguments: inputs as columns (D, N), per-sample parameters (N,); with
    ``n``, empty stand-ins at that many samples for tracing."""
    x = problem.inputs
    if n is not None:
        columns = torch.empty((x.shape[1], n), dtype=x.dtype, device=x.device)
        return columns, {k: torch.empty(n, dtype=v.dtype, device=v.device) if v.dim() else v
                         for k, v in problem.params.items()}
    return (x.t() if x.shape[1] == 1 else torch.stack(x.unbind(1))), {
        k: v.contiguous() if v.dim() else v for k, v in problem.params.items()}


def _build(problem: Problem, cross: bool) -> _Graph:
    """Forward mode traced into plain operations first, then forward mode of that graph
    traced again: nesting jvp inside one trace leaves an operation
    (_new_zeros_with_same_feature_meta) that Inductor cannot take with a symbolic N."""
    examples = _arguments(problem, TRACE_N)
    first = trace(_first_by_columns(problem), *examples)
    gm = trace(_second_by_columns(problem, cross, first), *examples)
    operations = sum(node.op == "call_function" for node in gm.graph.nodes)
    if operations > MAX_OPERATIONS:
        raise ValueError(f"its nested forward mode traces to {operations:,} operations")
    compiled: _Graph = torch.compile(gm, dynamic=True, fullgraph=True)
    return compiled


class CompiledSecondOrder:
    """Order 2 by ``forward`` for launches of at least ``min_samples`` samples, compiled."""

    def __init__(self, min_samples: int, chunk: int) -> None:
        self.min_samples = max(min_samples, 2)
        self.chunk = max(chunk, 2)
        self._graphs: dict[_Key, _Graph] = {}
        self._refused: set[_Key] = set()
        self._lock = threading.Lock()

    def applies(self, problem: Problem, cross: bool) -> bool:
        over_params = not set(problem.wrt) & set(problem.routine.inputs)
        return (problem.n >= self.min_samples and problem.routine.compile and over_params
                and _key(problem, cross) not in self._refused)

    def compiled(self, problem: Problem, cross: bool) -> bool:
        """Whether this problem's graph is built and passed its check."""
        key = _key(problem, cross)
        return key in self._graphs and key not in self._refused

    def run(self, problem: Problem, cross: bool) -> Derivatives | None:
        """The derivatives, or None when this problem cannot be compiled (then never tried
        again; the caller runs it eagerly)."""
        key = _key(problem, cross)
        try:
            with self._lock:
                graph = self._graphs.get(key)
                new = graph is None
                if graph is None:
                    graph = self._graphs[key] = _build(problem, cross)
            bounds = [*range(0, problem.n, self.chunk), problem.n]
            if len(bounds) > 2 and problem.n - bounds[-2] < 2:  # no call of one sample
                del bounds[-2]
            parts = [graph(*_arguments(_rows(problem, a, b)))
                     for a, b in itertools.pairwise(bounds)]
            if new:
                self._check(problem, cross, graph)
                metrics.child(metrics.COMPILED_GRAPHS, problem.routine.name).inc()
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:
            self._refused.add(key)
            log.warning("order 2 for routine %s (wrt %s) runs eagerly: compiling it failed: %s",
                        problem.routine.name, ", ".join(problem.wrt),
                        f"{type(exc).__name__}: {exc}".split("\n")[0])
            return None
        values, *rest = (parts[0] if len(parts) == 1
                         else [torch.cat(ts) for ts in zip(*parts, strict=True)])
        return Derivatives(values, dict(zip(_keys(problem, cross), rest, strict=True)))

    def _check(self, problem: Problem, cross: bool, graph: _Graph) -> None:
        few = _rows(problem, 0, min(_CHECK_N, problem.n))
        got = graph(*_arguments(few))
        eager = forward2(few, cross)
        want = (eager.values, *(eager.derivatives[k] for k in _keys(problem, cross)))
        tol = 1e-9 if problem.inputs.dtype == torch.float64 else 1e-4
        for g, w in zip(got, want, strict=True):
            if g.shape != w.shape or not torch.allclose(g, w, rtol=tol, atol=tol):
                raise ArithmeticError("the compiled graph disagrees with eager forward mode")


def _rows(problem: Problem, start: int, stop: int) -> Problem:
    if start == 0 and stop == problem.n:
        return problem
    params = {k: v[start:stop] if v.dim() else v for k, v in problem.params.items()}
    return Problem(problem.routine, problem.inputs[start:stop], params, problem.wrt)


_BY_SETTINGS: weakref.WeakKeyDictionary[CompiledForward, CompiledSecondOrder] = (
    weakref.WeakKeyDictionary())


def for_settings(compiled: CompiledForward) -> CompiledSecondOrder:
    """The order-2 counterpart of a CompiledForward: its sizes, its lifetime."""
    found = _BY_SETTINGS.get(compiled)
    if found is None:
        found = _BY_SETTINGS[compiled] = CompiledSecondOrder(compiled.min_samples,
                                                             compiled.chunk)
    return found
