"""Forward mode through compiled graphs, for large launches; no launch ever waits for one.

PyTorch's eager forward mode pays for generality on every operation: a Python reference
implementation run on meta tensors beside it, materialised zero tangents, a kernel per
operation. On the CPU that puts eager ``forward`` at 2-11x the cost of plain evaluation at
N >= 1e5 (bench/bench_strategies.py). Here the same ``torch.func.jvp`` through the same
``vmap`` is traced once into a graph of plain tensor operations, which Inductor fuses into one
pass over the data that computes values and tangents together (app.engine.compiled.builds says how a
graph is made, app.engine.compiled.tracing how it serves every batch size,
app.engine.compiled.rolled what happens to long loops, app.engine.compiled.catalogue which
kinds are built, loaded or refused).

The serving side, here:

- **A launch never waits.** :meth:`CompiledForward.run` returns None at once when its kind
  has no loaded graph (the caller then runs eager forward mode) and asks for a build, which
  runs in a process of its own (:class:`~app.engine.compiled.builds.ProcessBuilder`). A finished
  build is loaded as it finishes, in the builder's thread, and published between launches by
  :meth:`CompiledForward.swap_in`; what loading first imports is imported at start-up.
- **Every order through here.** Order 2 (with or without cross terms) and input features in
  wrt (delta) are kinds like any other, built and served the same way; so is plain
  evaluation, a kind with no wrt whose graph returns the values alone (asked for by large
  launches only: small ones are never counted hot, but use a loaded graph).
- **A bounded, canonical set of kinds** (:class:`~app.engine.compiled.builds.Kind`): ``wrt`` in the
  routine's order, so ``sigma,r`` and ``r,sigma`` are one graph (at order 2 too: d2y/da db is
  d2y/db da); parameters either all shared
  (0-d) or all per sample (N,), a launch with some of each using the per-sample graph with
  the shared ones expanded, and a shared launch the per-sample graph while its own is not
  built; at most ``max_graphs`` kinds (DYDC_COMPILE_MAX_GRAPHS), beyond which launches run
  eagerly and ``dydc_compile_refusals_total{reason="max_graphs"}`` counts the kinds refused.
- **Checked, then re-checked.** A build is checked against eager forward mode at two batch
  sizes before it is stored; once loaded, a graph's first launch and every
  ``recheck_every``-th (DYDC_COMPILE_RECHECK_EVERY) are compared with eager forward mode on a
  few of their rows. A mismatch retires the graph (and deletes its files): that launch and
  the kind's later ones run eagerly. Every refusal is counted by reason.
- **Builds step aside for large requests.** While a request of at least ``min_samples``
  samples is served (:meth:`CompiledForward.serving_large`), the build process runs only a
  share of the time (:class:`~app.engine.compiled.pacing.Pacer`, DYDC_COMPILE_BUILD_SHARE), and a
  finished build is loaded once no such request is in progress.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from app.engine.compiled.builds import (
    MAX_OPERATIONS,
    Builder,
    Graph,
    Kind,
    ProcessBuilder,
    canonical_cross,
    columns,
    eager_outputs,
    kind_of,
    output_names,
    private_tempdir,
    values_graph,
)
from app.engine.compiled.catalogue import GraphCatalogue
from app.engine.compiled.pacing import Pacer
from app.engine.compiled.threads import threads_for
from app.engine.compiled.tracing import TRACE_N
from app.engine.compiled.verification import mismatch
from app.engine.differentiation.bumping import pair_key, pairs
from app.engine.differentiation.strategies import Derivatives, Problem
from routines import Routine

__all__ = ["MAX_OPERATIONS", "TRACE_N", "CompiledForward", "runs_through_graphs",
           "values_graph"]

_CPU = torch.device("cpu")
_RECHECK_ROWS = 4  # rows of a live launch compared with eager forward mode

_Loaded = tuple[Kind, str]  # a kind, on one device


def runs_through_graphs(strategy: str | None) -> bool:
    """Whether a job under ``strategy`` may run through a compiled graph: forward mode
    (``forward``, or ``auto``, which picks it) and plain evaluation (None)."""
    return strategy in (None, "auto", "forward")


class CompiledForward:
    """Compiled forward mode for launches of at least ``min_samples`` samples, and for the
    smaller launches of a hot kind (one launched ``hot_launches`` times: 0 never); launches of
    more than ``chunk`` samples run in several calls of at most ``chunk`` samples. Graphs are
    built by ``builder`` (a build process storing them in ``cache_dir`` by default) and kept
    by :attr:`catalogue`, whose lock guards the builds; the counts of launches and the rates
    learned here change only in launches, which run one at a time (under the transforms
    lock), and take no lock."""

    def __init__(self, chunk: int, min_samples: int, *, cache_dir: Path | None = None,
                 max_graphs: int = 128, recheck_every: int = 1000, hot_launches: int = 0,
                 builder: Builder | None = None, pacer: Pacer | None = None) -> None:
        # sizes 0 and 1 get graphs of their own under torch.compile: never call with them
        self.chunk = max(chunk, 2)
        self.min_samples = max(min_samples, 2)
        self.recheck_every = recheck_every
        self.hot_launches = hot_launches
        self._small: dict[Kind, int] = {}  # small launches of each kind so far
        self._launches: dict[_Loaded, int] = {}
        self._rates: dict[_Loaded, float] = {}  # seconds per sample of a call, as measured
        if builder is None:
            builder = ProcessBuilder(cache_dir if cache_dir is not None else private_tempdir())
        self.catalogue = GraphCatalogue(builder, max_graphs=max_graphs, pacer=pacer)

    @property
    def builder(self) -> Builder:
        return self.catalogue.builder

    @builder.setter
    def builder(self, builder: Builder) -> None:
        self.catalogue.builder = builder

    @property
    def pacer(self) -> Pacer | None:
        return self.catalogue.pacer

    @property
    def cache_dir(self) -> Path:
        return self.catalogue.cache_dir

    @property
    def graphs(self) -> int:
        """Kinds built and ready to load (or loaded)."""
        return len(self.catalogue.artefacts)

    def compiled(self, routine: Routine, wrt: tuple[str, ...], dtype: torch.dtype,
                 device: torch.device = _CPU, order: int = 1, cross: bool = False) -> bool:
        """Whether a graph for one request of this kind (parameters shared) is loaded."""
        names = tuple(n for n in routine.param_names if n in wrt)
        kind = Kind(routine.name, routine.fn.__module__, names,
                    str(dtype).removeprefix("torch."), device.type, False, order,
                    canonical_cross(names, order, cross), source=routine.source or "")
        return (kind, str(device)) in self.catalogue.loaded

    def refused(self, problem: Problem, order: int = 1, cross: bool = False,
                device: torch.device | None = None) -> str | None:
        """Why the problem's kind (on ``device``, default the problem's) runs eagerly for good
        (a reason of app.metrics.COMPILE_REFUSAL_REASONS), or None."""
        return self.catalogue.refusals.get(_kind(problem, order, cross, device))

    def launch_seconds(self, problem: Problem, device: torch.device, order: int = 1,
                       cross: bool = False) -> float | None:
        """What a launch of ``problem`` takes through the graph of its kind on ``device``, at
        the seconds per sample its large launches took so far: 0.0 for a graph not launched
        large yet, None where no graph serves the kind there. A graph built and not yet
        published counts: the device worker publishes it before its next launch, which the
        request priced now would be (waiting for a launch to publish it, a request refused
        for its eager price would be refused for good when nothing else runs). The problem
        may be on another device (the engine prices requests before they move)."""
        place = str(device)
        served = self.catalogue.ready(_kind(problem, order, cross, device), place)
        return None if served is None else self._rates.get((served, place), 0.0) * problem.n

    def typical_build_s(self) -> float:
        """How long a build takes here (:meth:`GraphCatalogue.typical_build_s`)."""
        return self.catalogue.typical_build_s()

    def applies(self, problem: Problem, order: int = 1, cross: bool = False) -> bool:
        """Whether the launch goes to :meth:`run`: a large one, or a small one (2 samples or
        more) of a kind whose graph is loaded or that is hot (then run asks for its build)."""
        if problem.n < 2 or not problem.routine.compile:
            return False
        kind = kind_of(problem, order=order, cross=cross)
        if kind in self.catalogue.refusals:
            return False
        return problem.n >= self.min_samples or self._hot(kind, str(problem.inputs.device))

    def _hot(self, kind: Kind, place: str) -> bool:
        """A small launch of ``kind``: served by its graph where one is loaded (the shared
        kind by the per-sample one too); else counted, and its build asked for at the
        ``hot_launches``-th. Small launches of eager forward mode cost the device worker about
        10x what a graph's call does (0.6 ms against 0.06 at 16-576 samples of ``linear``), in
        the interpreter's lock that the event loop waits for."""
        if self.catalogue.serving(kind, place) is not None:
            return True
        if not self.hot_launches or kind.source or not kind.wrt:  # (a count per caller's
            # text would grow without bound: callers' expressions compile for large launches;
            # plain evaluation's small launches cost eagerly 3x a graph's call, not 10x as
            # forward mode's: 0.36 against 0.11 ms for 16 samples of Black-Scholes, not
            # worth a build and a graph slot of their own)
            return False
        count = self._small.get(kind, 0) + 1
        self._small[kind] = count
        return count >= self.hot_launches

    # -- serving ---------------------------------------------------------------------------

    def run(self, problem: Problem, order: int = 1, cross: bool = False) -> Derivatives | None:
        """The derivatives from a loaded graph, or None at once (the caller runs eager
        forward mode): no graph is loaded for the problem's kind (a build is asked for), or
        the graph failed its re-check (it is retired)."""
        kind = kind_of(problem, order=order, cross=cross)
        place = str(problem.inputs.device)
        serving = self.catalogue.serving(kind, place)
        if serving is None:
            self.catalogue.request(kind, problem)
            return None
        kind_served, graph = serving
        if kind_served.per_sample:
            problem = Problem(problem.routine, problem.inputs,
                              {k: v.expand(problem.n) if not v.dim() else v
                               for k, v in problem.params.items()}, problem.wrt)
        began = time.perf_counter()
        try:
            out = _call(graph, problem, self.chunk)
            if problem.inputs.device.type == "cuda":  # timed to the end of its kernels
                torch.cuda.synchronize(problem.inputs.device)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:
            self.catalogue.retire(kind_served, place, "recheck", f"its call failed: {exc}")
            return None
        key = (kind_served, place)
        if problem.n >= self.min_samples:  # what prices large requests: a small launch's
            # time is mostly its call's fixed cost, and would price them far over
            self._learn_rate(key, (time.perf_counter() - began) / problem.n)
        count = self._launches.get(key, 0)
        self._launches[key] = count + 1
        if count % self.recheck_every == 0:
            wrong = _recheck(problem, kind_served, out)
            if wrong is not None:
                self.catalogue.retire(kind_served, place, "recheck", wrong)
                return None
        values, *rest = out
        by_name = dict(zip(kind_served.outputs, rest, strict=True))
        wanted = [*problem.wrt, *(pair_key(a, b) for a, b in pairs(problem.wrt, cross)
                                  if order == 2)]
        return Derivatives(values, {name: _symmetric(by_name, name) for name in wanted})

    def _learn_rate(self, key: _Loaded, per_sample_s: float) -> None:
        """Move the kind's seconds per sample halfway to this launch's, in log space (the
        first launch sets it): admission prices the kind's next requests with it."""
        old = self._rates.get(key)
        self._rates[key] = per_sample_s if old is None else math.sqrt(old * per_sample_s)

    # -- building and swapping in (app.engine.compiled.catalogue) --------------------------

    def request(self, problem: Problem, order: int = 1, cross: bool = False,
                device: torch.device | None = None) -> None:
        """Ask for the problem's kind (on ``device``, default the problem's) to be built,
        unless it is built, being built or refused (returns at once). An earlier build stored
        in the cache directory is taken as built."""
        self.catalogue.request(_kind(problem, order, cross, device), problem)

    def swap_in(self, device: torch.device) -> int:
        """Take in the graphs built since the last call, for ``device`` (between launches);
        returns how many (:meth:`GraphCatalogue.swap_in`)."""
        return self.catalogue.swap_in(device)

    def warm_up(self, problems: Iterable[Problem], device: torch.device,
                orders: tuple[int, ...] = (1,)) -> None:
        """Build (or find in the cache directory) the problems' kinds at each order and load
        them; returns when every build has finished, refused or not. The build process is
        started here even when every graph is found in the cache directory."""
        self.builder.start()
        for problem in problems:
            for order in orders:
                if self.applies(problem, order):
                    self.request(problem, order)
        self.settle()
        self.swap_in(device)

    def settle(self, timeout: float | None = None) -> bool:
        """Wait until every kind asked for is built and loaded, or refused (False if
        ``timeout`` passed first)."""
        return self.catalogue.settle(timeout)

    def serving_large(self) -> contextlib.AbstractContextManager[None]:
        """Around the whole of a large request (decode, launch, encode): the build process
        runs only its share of the time meanwhile."""
        return contextlib.nullcontext() if self.pacer is None else self.pacer.large()

    def close(self) -> None:
        """Stop the build process (builds in progress are abandoned)."""
        self.catalogue.close()


def _kind(problem: Problem, order: int, cross: bool, device: torch.device | None) -> Kind:
    """The problem's kind, on ``device`` where given (else the problem's own device)."""
    kind = kind_of(problem, order=order, cross=cross)
    return kind if device is None else replace(kind, device=device.type)


def _call(graph: Graph, problem: Problem, chunk: int) -> tuple[Tensor, ...]:
    """The graph over the problem, in calls of at most ``chunk`` samples (never one)."""
    n = problem.n
    bounds = [*range(0, n, chunk), n]
    if len(bounds) > 2 and n - bounds[-2] < 2:  # no call of one sample: merge it
        del bounds[-2]
    with threads_for(n, problem.inputs.device):
        parts = [graph(*columns(problem, slice(a, b))) for a, b in itertools.pairwise(bounds)]
    if len(parts) == 1:
        return parts[0]
    return tuple(torch.cat(ts) for ts in zip(*parts, strict=True))


def _recheck(problem: Problem, kind: Kind, out: tuple[Tensor, ...]) -> str | None:
    """Compare a few rows of a launch with eager forward mode (the caller holds the
    transforms lock, as every launch does)."""
    n = problem.n
    idx = sorted({0, n // 3, 2 * n // 3, n - 1})[:_RECHECK_ROWS]
    rows = torch.tensor(idx, device=problem.inputs.device)
    params = {k: v[rows] if v.dim() else v for k, v in problem.params.items()}
    few = Problem(problem.routine, problem.inputs[rows], params, kind.wrt)
    return mismatch([t[rows] for t in out], eager_outputs(few, kind), output_names(kind))


def _symmetric(by_name: dict[str, Tensor], key: str) -> Tensor:
    """A derivative by its key; d2y/db da is d2y/da db (a graph keys pairs in the routine's
    order of wrt, a request in its own)."""
    if key in by_name or "," not in key:
        return by_name[key]
    a, b = key.split(",")
    return by_name[pair_key(b, a)]
