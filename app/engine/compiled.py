"""Forward mode through torch.compile, for large launches.

PyTorch's eager forward mode pays for generality on every operation: a Python reference
implementation run on meta tensors beside it, materialised zero tangents, a kernel per
operation. On the CPU that puts eager ``forward`` at 2-11x the cost of plain evaluation at
N >= 1e5 (bench/bench_strategies.py). Here the same ``torch.func.jvp`` through the same
``vmap`` is traced once into a graph of plain tensor operations, which Inductor fuses into
one pass over the data that computes values and tangents together.

How the graph is made, once per routine, wrt set, dtype, device and parameter layout:

- **One jvp per parameter.** The traced function pushes one tangent per parameter rather
  than vmapping over the basis (``jacfwd``): every tangent then lives in the same loop over
  samples, where Inductor computes what they share (the values, an ``exp``) once.
- **Inputs by column.** The graph takes the inputs transposed, (D, N) and contiguous, so
  that each feature is read with unit stride and the fused loop vectorises; (N, D) rows made
  Inductor fall back to scalar code for ``black_scholes_call``.
- **Any batch size.** ``vmap`` fixes the batch size of what it traces (even under symbolic
  tracing), so the graph is traced with fake tensors at a batch size no routine uses
  otherwise, :data:`TRACE_N` (a prime), and every shape argument equal to it is then replaced
  by the size of the input. torch.compile then builds one graph with a symbolic N: no
  padding, no recompiling per size (app.engine.tracing).
- **Loops.** The routine's values are traced first; if they hold a long loop (a Python loop
  unrolls into every step), one step is compiled and called once per iteration instead
  (app.engine.rolled). A long graph with no loop to roll is not compiled at all.

After its first call a graph is checked against eager forward mode on a few samples, which
would catch a shape the replacement missed. What cannot be traced or compiled (an operation
without a forward formula, no C++ compiler, a routine that opts out, a check that fails) runs
eagerly, as before, and is not tried again.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable

import torch
from torch import Tensor
from torch.fx import GraphModule

from app import metrics
from app.engine.evaluation import evaluate_batch
from app.engine.rolled import RolledForward, find_loop
from app.engine.strategies import Derivatives, Problem, forward
from app.engine.tracing import TRACE_N, trace
from routines import Routine

__all__ = ["TRACE_N", "CompiledForward", "values_graph"]

log = logging.getLogger(__name__)

# values graphs larger than this, with no loop to roll, stay eager: compiling logistic_rk4's
# forward mode whole (49,614 operations) had not finished after 5 minutes
MAX_OPERATIONS = 4_000
_CHECK_N = 13  # samples on which a new graph is compared with eager forward mode

_CPU = torch.device("cpu")
_Key = tuple[str, tuple[str, ...], torch.dtype, torch.device, tuple[tuple[str, bool], ...]]
_Graph = Callable[[Tensor, dict[str, Tensor]], tuple[Tensor, ...]]


def _key(problem: Problem) -> _Key:
    layout = tuple((name, bool(v.dim())) for name, v in problem.params.items())
    return (problem.routine.name, problem.wrt, problem.inputs.dtype, problem.inputs.device,
            layout)


def _forward_by_columns(routine: Routine, wrt: tuple[str, ...]) -> _Graph:
    """Values and one tangent per parameter, from inputs given as columns (D, N)."""

    def run(columns: Tensor, params: dict[str, Tensor]) -> tuple[Tensor, ...]:
        x = columns.t()
        pushed = {name: forward(Problem(routine, x, params, (name,))) for name in wrt}
        return (pushed[wrt[0]].values, *(d.derivatives[name] for name, d in pushed.items()))

    return run


def _examples(problem: Problem) -> tuple[Tensor, dict[str, Tensor]]:
    """Stand-ins for a graph's arguments at TRACE_N samples: inputs as columns (D, N), and
    the parameters, per-sample ones (N,)."""
    x = problem.inputs
    columns = torch.empty((len(problem.routine.inputs), TRACE_N), dtype=x.dtype, device=x.device)
    params = {name: torch.empty(TRACE_N, dtype=v.dtype, device=v.device) if v.dim() else v
              for name, v in problem.params.items()}
    return columns, params


def _trace(problem: Problem) -> GraphModule:
    """The problem's forward mode as a graph of plain tensor operations, for any N."""
    return trace(_forward_by_columns(problem.routine, problem.wrt), *_examples(problem))


def values_graph(problem: Problem) -> GraphModule:
    """The routine's values alone (no tangents) as a graph, for any N: its inputs are the
    columns, then the parameters in the problem's order."""
    routine, names = problem.routine, tuple(problem.params)
    columns, params = _examples(problem)

    def values(columns: Tensor, *params: Tensor) -> Tensor:
        return evaluate_batch(routine, columns.t(), dict(zip(names, params, strict=True)))

    return trace(values, columns, *params.values())


def _build(problem: Problem) -> _Graph:
    """The problem's compiled forward mode: the values' graph rolled around its loop if it has
    one (app.engine.rolled), else the whole of forward mode traced and compiled."""
    graph = values_graph(problem)
    loop = find_loop(graph.graph)
    if loop is not None:
        return RolledForward(graph, loop, tuple(problem.params), problem.wrt)
    operations = sum(node.op == "call_function" for node in graph.graph.nodes)
    if operations > MAX_OPERATIONS:
        raise ValueError(f"its values trace to {operations:,} operations with no loop to roll "
                         f"(more than {MAX_OPERATIONS:,} are not compiled whole)")
    compiled: _Graph = torch.compile(_trace(problem), dynamic=True, fullgraph=True)
    return compiled


def _columns(problem: Problem, rows: slice) -> tuple[Tensor, dict[str, Tensor]]:
    """A graph's arguments: inputs (D, N) contiguous. One column is a view; several are
    stacked, which copies them 7x faster than ``.t().contiguous()`` (0.07 against 0.5 ms
    for 1e5 x 2 here)."""
    params = {name: v[rows].contiguous() if v.dim() else v for name, v in problem.params.items()}
    x = problem.inputs[rows]
    return (x.t() if x.shape[1] == 1 else torch.stack(x.unbind(1))), params


def _check(problem: Problem, graph: _Graph) -> None:
    """Raise unless the graph gives eager forward mode's numbers on the first samples."""
    rows = slice(0, min(_CHECK_N, problem.n))
    columns, params = _columns(problem, rows)
    got = graph(columns, params)
    eager = forward(Problem(problem.routine, problem.inputs[rows], params, problem.wrt))
    want = (eager.values, *(eager.derivatives[name] for name in problem.wrt))
    tol = 1e-9 if problem.inputs.dtype == torch.float64 else 1e-4
    for g, w in zip(got, want, strict=True):
        if g.shape != w.shape or not torch.allclose(g, w, rtol=tol, atol=tol, equal_nan=True):
            raise ArithmeticError("the compiled graph disagrees with eager forward mode")


class CompiledForward:
    """``forward`` for launches of at least ``min_samples`` samples, compiled; launches of
    more than ``chunk`` samples run in several calls of at most ``chunk`` samples."""

    def __init__(self, chunk: int, min_samples: int) -> None:
        # sizes 0 and 1 get graphs of their own under torch.compile: never call with them
        self.chunk = max(chunk, 2)
        self.min_samples = max(min_samples, 2)
        self._graphs: dict[_Key, _Graph] = {}
        self._refused: set[_Key] = set()  # a graph that failed its first call is kept here too
        self._lock = threading.Lock()
        # A graph per key, each its own GraphModule, but Dynamo counts recompiles per code
        # object, and equal graphs share one: its limit of 8 is meant for one function.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 256)

    @property
    def graphs(self) -> int:
        """Graphs compiled so far (their first call succeeded)."""
        return len(self._graphs.keys() - self._refused)

    def compiled(self, routine: Routine, wrt: tuple[str, ...], dtype: torch.dtype,
                 device: torch.device = _CPU) -> bool:
        """Whether the graph for one request of this kind (parameters shared) is compiled."""
        layout = tuple((p.name, False) for p in routine.params)
        key = (routine.name, wrt, dtype, device, layout)
        return key in self._graphs and key not in self._refused

    def applies(self, problem: Problem) -> bool:
        return (problem.n >= self.min_samples and problem.routine.compile
                and _key(problem) not in self._refused)

    def run(self, problem: Problem) -> Derivatives | None:
        """The derivatives, or None when this problem cannot be compiled (it is then never
        tried again, and the caller runs it eagerly)."""
        key = _key(problem)
        try:
            return self._run(problem, key)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:
            self._refused.add(key)
            log.warning("forward mode for routine %s (wrt %s, %s) runs eagerly: compiling "
                        "it failed: %s", problem.routine.name, ", ".join(problem.wrt),
                        problem.inputs.dtype, f"{type(exc).__name__}: {exc}".split("\n")[0])
            return None

    def _graph(self, problem: Problem, key: _Key) -> tuple[_Graph, bool]:
        """The key's graph, and whether it is new (its first call compiles it)."""
        with self._lock:
            graph = self._graphs.get(key)
            if graph is not None:
                return graph, False
            graph = self._graphs[key] = _build(problem)
            return graph, True

    def _run(self, problem: Problem, key: _Key) -> Derivatives:
        began = time.perf_counter()
        graph, new = self._graph(problem, key)
        n, wrt = problem.n, problem.wrt
        bounds = [*range(0, n, self.chunk), n]
        if len(bounds) > 2 and n - bounds[-2] < 2:  # no call of one sample: merge it
            del bounds[-2]
        # the first call compiles, with this launch's size as Inductor's hint for its choices
        parts = [graph(*_columns(problem, slice(a, b))) for a, b in itertools.pairwise(bounds)]
        if new:
            _check(problem, graph)
            self._first_call(problem, time.perf_counter() - began)
        if len(parts) == 1:
            values, *tangents = parts[0]
        else:
            values, *tangents = (torch.cat(ts) for ts in zip(*parts, strict=True))
        return Derivatives(values, dict(zip(wrt, tangents, strict=True)))

    def _first_call(self, problem: Problem, seconds: float) -> None:
        metrics.child(metrics.COMPILED_GRAPHS, problem.routine.name).inc()
        metrics.COMPILE_SECONDS.observe(seconds)
        log.info("compiled forward mode for routine %s (wrt %s, %s) in %.1f s",
                 problem.routine.name, ", ".join(problem.wrt), problem.inputs.dtype, seconds)
