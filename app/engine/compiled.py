"""Forward mode through torch.compile, for large launches.

PyTorch's eager forward mode pays for generality on every operation: a Python reference
implementation run on meta tensors beside it, materialised zero tangents, a kernel per
operation. On the CPU that put ``forward`` at 2-11x the cost of plain evaluation at
N >= 1e5 (bench/bench_strategies.py). torch.compile traces the same
``torch.func.jvp`` through the same ``vmap`` into one graph, and Inductor fuses values and
tangents into one pass over the data.

``vmap`` needs a concrete batch size, so a compiled graph is specialised to its N. A launch
is therefore cut into chunks of one fixed size (DYDC_COMPILE_CHUNK) and the last chunk is
padded by repeating its last sample, so that each routine needs one graph per wrt set, dtype,
device and parameter layout (shared or per-sample), compiled on first use and kept. What
cannot be compiled (an operation without a forward formula, no C++ compiler, a routine that
opts out) runs eagerly, as before, and is not tried again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import torch
from torch import Tensor

from app import metrics
from app.engine.strategies import Derivatives, Problem, forward
from routines import Routine

__all__ = ["CompiledForward"]

log = logging.getLogger(__name__)

_CPU = torch.device("cpu")
_Key = tuple[str, tuple[str, ...], torch.dtype, torch.device, tuple[tuple[str, bool], ...]]
_Graph = Callable[[Tensor, dict[str, Tensor], Tensor, dict[str, Tensor]], None]


def _key(problem: Problem) -> _Key:
    layout = tuple((name, bool(v.dim())) for name, v in problem.params.items())
    return (problem.routine.name, problem.wrt, problem.inputs.dtype, problem.inputs.device,
            layout)


def _pad(t: Tensor, size: int) -> Tensor:
    """The first dimension padded to ``size`` by repeating the last row: real inputs from the
    routine's domain, so the padding computes finite numbers that are then dropped."""
    missing = size - t.shape[0]
    if missing == 0:
        return t
    return torch.cat([t, t[-1:].expand(missing, *t.shape[1:])])


class CompiledForward:
    """``forward`` for launches of at least ``min_samples`` samples, in compiled chunks."""

    def __init__(self, chunk: int, min_samples: int) -> None:
        self.chunk = chunk
        self.min_samples = min_samples
        self._graphs: dict[_Key, _Graph] = {}
        self._refused: set[_Key] = set()
        self._compiled: set[_Key] = set()  # graphs whose first call (the compile) succeeded
        self._lock = threading.Lock()
        # A graph per key, all from the one code object of run() below: Dynamo's limit of 8
        # entries per code object is meant for recompiles of one function, not for this.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 256)

    @property
    def graphs(self) -> int:
        """Graphs compiled so far (their first call succeeded)."""
        return len(self._compiled)

    def compiled(self, routine: Routine, wrt: tuple[str, ...], dtype: torch.dtype,
                 device: torch.device = _CPU) -> bool:
        """Whether the graph for one request of this kind (parameters shared) is compiled."""
        layout = tuple((p.name, False) for p in routine.params)
        return (routine.name, wrt, dtype, device, layout) in self._compiled

    def applies(self, problem: Problem) -> bool:
        return (problem.n >= self.min_samples and problem.routine.compile
                and _key(problem) not in self._refused)

    def _graph(self, problem: Problem, key: _Key) -> _Graph:
        with self._lock:
            graph = self._graphs.get(key)
            if graph is None:
                routine, wrt = problem.routine, problem.wrt

                def run(inputs: Tensor, params: dict[str, Tensor], values: Tensor,
                        tangents: dict[str, Tensor]) -> None:
                    # results written into the caller's buffers: Inductor stores them from
                    # the fused kernel, with no copy or concatenation after it
                    d = forward(Problem(routine, inputs, params, wrt))
                    values.copy_(d.values)
                    for name in wrt:
                        tangents[name].copy_(d.derivatives[name])

                graph = self._graphs[key] = torch.compile(run, dynamic=False, fullgraph=True)
            return graph

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

    def _first_call(self, problem: Problem, key: _Key, seconds: float) -> None:
        if key in self._compiled:
            return
        self._compiled.add(key)
        metrics.child(metrics.COMPILED_GRAPHS, problem.routine.name).inc()
        metrics.COMPILE_SECONDS.observe(seconds)
        log.info("compiled forward mode for routine %s (wrt %s, %s, chunks of %d) in %.1f s",
                 problem.routine.name, ", ".join(problem.wrt), problem.inputs.dtype,
                 self.chunk, seconds)

    def _run(self, problem: Problem, key: _Key) -> Derivatives:
        graph = self._graph(problem, key)
        n, size = problem.n, self.chunk
        x = problem.inputs
        # room for whole chunks; the answer is a view of the first n rows
        padded = -(-n // size) * size
        values = torch.empty((padded, len(problem.routine.outputs)), dtype=x.dtype,
                             device=x.device)
        tangents = {name: torch.empty_like(values) for name in problem.wrt}
        for start in range(0, n, size):
            rows = min(size, n - start)
            params = {name: _pad(v[start:start + rows], size) if v.dim() else v
                      for name, v in problem.params.items()}
            began = time.perf_counter()
            graph(_pad(x[start:start + rows], size), params, values[start:start + size],
                  {name: t[start:start + size] for name, t in tangents.items()})
            if start == 0:
                self._first_call(problem, key, time.perf_counter() - began)
        return Derivatives(values[:n], {name: t[:n] for name, t in tangents.items()})
