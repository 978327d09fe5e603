"""Forward mode through torch.compile beyond what app.engine.compiled serves: order 2 (forward
over forward), and input features in wrt (delta) at either order, for large launches.

Eager nested ``jvp`` carries three tangents beside every value and pays PyTorch's per-operation
overhead on each: 5-8x plain evaluation at N >= 1e5 on the CPU (bench/bench_second_order.py).
Forward over forward is traced once into a graph of plain tensor
operations for any batch size (app.engine.tracing) and Inductor fuses it into one pass that
computes values, first and second derivatives together, as app.engine.compiled does for
order 1. That module is left alone (its graphs are keyed and rolled for order 1); this one
takes the same switch and sizes from it, so ``DYDC_COMPILE`` and ``DYDC_COMPILE_MIN_SAMPLES``
hold for both orders.

An input feature in wrt is a per-sample parameter of a derived routine
(app.engine.input_sensitivities); its graph is that of any per-sample parameter, so delta
costs what vega costs. Kept simple on purpose: no loop rolling (a routine whose values trace
to more than :data:`MAX_OPERATIONS` operations stays eager), and a graph that cannot
be built or disagrees with eager forward mode on its first samples is refused for good.
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
from app.engine.compiled import CompiledForward, values_graph
from app.engine.second_order import forward2
from app.engine.strategies import Derivatives, Problem, forward
from app.engine.tracing import TRACE_N, trace

__all__ = ["MAX_OPERATIONS", "CompiledSensitivities", "for_settings"]

log = logging.getLogger(__name__)

# a routine whose values trace to more operations than this is not compiled here: a Python
# loop unrolled (logistic_rk4's 200 steps: 9,612 operations) takes minutes to trace in
# forward mode, let alone compile; app.engine.compiled rolls such loops for order 1
MAX_OPERATIONS = 4_000
_CHECK_N = 13
_Key = tuple[str, tuple[str, ...], int, bool, torch.dtype, torch.device,
             tuple[tuple[str, bool], ...]]
_Graph = Callable[[Tensor, dict[str, Tensor]], tuple[Tensor, ...]]
_Columns = _Graph  # a function of inputs as columns (D, N) and the parameters


def _key(problem: Problem, cross: bool, order: int) -> _Key:
    layout = tuple((name, bool(v.dim())) for name, v in problem.params.items())
    return (problem.routine.name, problem.wrt, order, cross and order == 2,
            problem.inputs.dtype, problem.inputs.device, layout)


def _keys(problem: Problem, cross: bool, order: int) -> list[str]:
    second = [pair_key(a, b) for a, b in pairs(problem.wrt, cross)] if order == 2 else []
    return [*problem.wrt, *second]


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


def _build(problem: Problem, cross: bool, order: int) -> _Graph:
    """Forward mode traced into plain operations first, then forward mode of that graph
    traced again: nesting jvp inside one trace leaves an operation
    (_new_zeros_with_same_feature_meta) that Inductor cannot take with a symbolic N."""
    values = values_graph(problem)  # seconds, where forward mode of a long loop takes minutes
    operations = sum(node.op == "call_function" for node in values.graph.nodes)
    if operations > MAX_OPERATIONS:
        raise ValueError(f"its values trace to {operations:,} operations (more than "
                         f"{MAX_OPERATIONS:,} are not compiled beyond order 1)")
    examples = _arguments(problem, TRACE_N)
    gm = first = trace(_first_by_columns(problem), *examples)
    if order == 2:
        gm = trace(_second_by_columns(problem, cross, first), *examples)
    compiled: _Graph = torch.compile(gm, dynamic=True, fullgraph=True)
    return compiled


class CompiledSensitivities:
    """``forward`` at order 2, or with input features in wrt, for launches of at least
    ``min_samples`` samples, compiled."""

    def __init__(self, min_samples: int, chunk: int) -> None:
        self.min_samples = max(min_samples, 2)
        self.chunk = max(chunk, 2)
        self._graphs: dict[_Key, _Graph] = {}
        self._refused: set[_Key] = set()
        self._lock = threading.Lock()

    def applies(self, problem: Problem, cross: bool, order: int) -> bool:
        return (problem.n >= self.min_samples and problem.routine.compile
                and _key(problem, cross, order) not in self._refused)

    def compiled(self, problem: Problem, cross: bool, order: int) -> bool:
        """Whether this problem's graph is built and passed its check."""
        key = _key(problem, cross, order)
        return key in self._graphs and key not in self._refused

    def run(self, problem: Problem, cross: bool, order: int) -> Derivatives | None:
        """The derivatives, or None when this problem cannot be compiled (then never tried
        again; the caller runs it eagerly)."""
        key = _key(problem, cross, order)
        try:
            with self._lock:
                graph = self._graphs.get(key)
                new = graph is None
                if graph is None:
                    graph = self._graphs[key] = _build(problem, cross, order)
            bounds = [*range(0, problem.n, self.chunk), problem.n]
            if len(bounds) > 2 and problem.n - bounds[-2] < 2:  # no call of one sample
                del bounds[-2]
            parts = [graph(*_arguments(_rows(problem, a, b)))
                     for a, b in itertools.pairwise(bounds)]
            if new:
                self._check(problem, cross, order, graph)
                metrics.child(metrics.COMPILED_GRAPHS, problem.routine.name).inc()
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:
            self._refused.add(key)
            log.warning("order %d for routine %s (wrt %s) runs eagerly: compiling it failed: "
                        "%s", order, problem.routine.name, ", ".join(problem.wrt),
                        f"{type(exc).__name__}: {exc}".split("\n")[0])
            return None
        values, *rest = (parts[0] if len(parts) == 1
                         else [torch.cat(ts) for ts in zip(*parts, strict=True)])
        return Derivatives(values, dict(zip(_keys(problem, cross, order), rest, strict=True)))

    def _check(self, problem: Problem, cross: bool, order: int, graph: _Graph) -> None:
        few = _rows(problem, 0, min(_CHECK_N, problem.n))
        got = graph(*_arguments(few))
        eager = forward2(few, cross) if order == 2 else forward(few)
        want = (eager.values, *(eager.derivatives[k] for k in _keys(problem, cross, order)))
        tol = 1e-9 if problem.inputs.dtype == torch.float64 else 1e-4
        for g, w in zip(got, want, strict=True):
            if g.shape != w.shape or not torch.allclose(g, w, rtol=tol, atol=tol):
                raise ArithmeticError("the compiled graph disagrees with eager forward mode")


def _rows(problem: Problem, start: int, stop: int) -> Problem:
    if start == 0 and stop == problem.n:
        return problem
    params = {k: v[start:stop] if v.dim() else v for k, v in problem.params.items()}
    return Problem(problem.routine, problem.inputs[start:stop], params, problem.wrt)


_BY_SETTINGS: weakref.WeakKeyDictionary[CompiledForward, CompiledSensitivities] = (
    weakref.WeakKeyDictionary())


def for_settings(compiled: CompiledForward) -> CompiledSensitivities:
    """The counterpart of a CompiledForward for what it leaves out: its sizes, its
    lifetime."""
    found = _BY_SETTINGS.get(compiled)
    if found is None:
        found = _BY_SETTINGS[compiled] = CompiledSensitivities(compiled.min_samples,
                                                             compiled.chunk)
    return found
