"""Forward mode through compiled graphs, for large launches; no launch ever waits for one.

PyTorch's eager forward mode pays for generality on every operation: a Python reference
implementation run on meta tensors beside it, materialised zero tangents, a kernel per
operation. On the CPU that puts eager ``forward`` at 2-11x the cost of plain evaluation at
N >= 1e5 (bench/bench_strategies.py). Here the same ``torch.func.jvp`` through the same
``vmap`` is traced once into a graph of plain tensor operations, which Inductor fuses into one
pass over the data that computes values and tangents together (app.engine.compiled.builds says how a
graph is made, app.engine.compiled.tracing how it serves every batch size,
app.engine.compiled.rolled what happens to long loops).

The serving side, here:

- **A launch never waits.** :meth:`CompiledForward.run` returns None at once when its kind
  has no loaded graph (the caller then runs eager forward mode) and asks for a build, which
  runs in a process of its own (:class:`~app.engine.compiled.builds.ProcessBuilder`). A finished
  build is loaded as it finishes, in the builder's thread, and published between launches by
  :meth:`CompiledForward.swap_in`; what loading first imports is imported at start-up.
- **Every order through here.** Order 2 (with or without cross terms) and input features in
  wrt (delta) are kinds like any other, built and served the same way.
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
import logging
import math
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from app import metrics
from app.engine.compiled.builds import (
    MAX_OPERATIONS,
    Artefact,
    Builder,
    BuildRefused,
    Graph,
    Kind,
    ProcessBuilder,
    Samples,
    cached,
    canonical_cross,
    columns,
    eager_outputs,
    forget,
    kind_of,
    load,
    output_names,
    private_tempdir,
    values_graph,
)
from app.engine.compiled.pacing import Pacer
from app.engine.compiled.tracing import TRACE_N
from app.engine.compiled.verification import mismatch
from app.engine.differentiation.bumping import pair_key, pairs
from app.engine.differentiation.strategies import Derivatives, Problem
from routines import Routine

__all__ = ["MAX_OPERATIONS", "TRACE_N", "CompiledForward", "values_graph"]

log = logging.getLogger(__name__)

_CPU = torch.device("cpu")
_RECHECK_ROWS = 4  # rows of a live launch compared with eager forward mode
# A finished build waits at most this long for a moment with no large request in progress
# before it is loaded (the load holds the interpreter's lock for a while, in this process)
_LOAD_QUIET_WAIT_S = 30.0

_Loaded = tuple[Kind, str]  # a kind, on one device
# A build's time before any has finished (one routine's graph: tens of seconds to two minutes
# on the 2-core development machine, docs/compiled.md)
DEFAULT_BUILD_S = 60.0


class CompiledForward:
    """Compiled forward mode for launches of at least ``min_samples`` samples, and for the
    smaller launches of a hot kind (one launched ``hot_launches`` times: 0 never); launches of
    more than ``chunk`` samples run in several calls of at most ``chunk`` samples. Graphs are
    built by ``builder`` (a build process storing them in ``cache_dir`` by default)."""

    def __init__(self, chunk: int, min_samples: int, *, cache_dir: Path | None = None,
                 max_graphs: int = 128, recheck_every: int = 1000, hot_launches: int = 0,
                 builder: Builder | None = None, pacer: Pacer | None = None) -> None:
        # sizes 0 and 1 get graphs of their own under torch.compile: never call with them
        self.chunk = max(chunk, 2)
        self.min_samples = max(min_samples, 2)
        self.max_graphs = max_graphs
        self.recheck_every = recheck_every
        self.hot_launches = hot_launches
        self._small: dict[Kind, int] = {}  # small launches of each kind so far
        if builder is None:
            builder = ProcessBuilder(cache_dir if cache_dir is not None else private_tempdir())
        self.builder = builder
        self.pacer = pacer
        self._lock = threading.Lock()
        self._routines: dict[Kind, Routine] = {}
        self._pending: dict[Kind, Future[Artefact]] = {}
        self._artefacts: dict[Kind, Artefact] = {}
        self._graphs: dict[_Loaded, Graph] = {}
        self._devices: set[torch.device] = set()  # those swap_in has served
        self._preloaded: dict[_Loaded, Graph] = {}  # loaded when built, swapped in next
        self._unsettled: set[Kind] = set()  # asked for, and not yet built and loaded, or refused
        self._settled = threading.Condition(self._lock)
        self._launches: dict[_Loaded, int] = {}
        self._refused: dict[Kind, str] = {}
        self._rates: dict[_Loaded, float] = {}  # seconds per sample of a call, as measured

    @property
    def cache_dir(self) -> Path:
        return self.builder.cache_dir

    @property
    def graphs(self) -> int:
        """Kinds built and ready to load (or loaded)."""
        return len(self._artefacts)

    def compiled(self, routine: Routine, wrt: tuple[str, ...], dtype: torch.dtype,
                 device: torch.device = _CPU, order: int = 1, cross: bool = False) -> bool:
        """Whether a graph for one request of this kind (parameters shared) is loaded."""
        names = tuple(n for n in routine.param_names if n in wrt)
        kind = Kind(routine.name, routine.fn.__module__, names,
                    str(dtype).removeprefix("torch."), device.type, False, order,
                    canonical_cross(names, order, cross), source=routine.source or "")
        return (kind, str(device)) in self._graphs

    def refused(self, problem: Problem, order: int = 1, cross: bool = False,
                device: torch.device | None = None) -> str | None:
        """Why the problem's kind (on ``device``, default the problem's) runs eagerly for good
        (a reason of REASONS), or None."""
        return self._refused.get(_kind(problem, order, cross, device))

    def launch_seconds(self, problem: Problem, device: torch.device, order: int = 1,
                       cross: bool = False) -> float | None:
        """What a launch of ``problem`` takes through the graph of its kind on ``device``, at
        the seconds per sample its large launches took so far: 0.0 for a graph not launched
        large yet, None where no graph serves the kind there. A graph built and not yet
        published counts: the device worker publishes it before its next launch, which the
        request priced now would be (waiting for a launch to publish it, a request refused
        for its eager price would be refused for good when nothing else runs). The problem
        may be on another device (the engine prices requests before they move)."""
        kind = _kind(problem, order, cross, device)
        place = str(device)
        for served in (kind, replace(kind, per_sample=True)):
            if (served, place) in self._graphs or served in self._artefacts:
                return self._rates.get((served, place), 0.0) * problem.n
        return None

    def typical_build_s(self) -> float:
        """How long a build takes here: the mean of those finished since start-up, else
        ``DEFAULT_BUILD_S``."""
        with self._lock:
            took = [a.seconds for a in self._artefacts.values() if a.seconds > 0]
        return sum(took) / len(took) if took else DEFAULT_BUILD_S

    def applies(self, problem: Problem, order: int = 1, cross: bool = False) -> bool:
        """Whether the launch goes to :meth:`run`: a large one, or a small one (2 samples or
        more) of a kind whose graph is loaded or that is hot (then run asks for its build)."""
        if problem.n < 2 or not problem.routine.compile:
            return False
        kind = kind_of(problem, order=order, cross=cross)
        if kind in self._refused:
            return False
        return problem.n >= self.min_samples or self._hot(kind, str(problem.inputs.device))

    def _hot(self, kind: Kind, place: str) -> bool:
        """A small launch of ``kind``: served by its graph where one is loaded (the shared
        kind by the per-sample one too); else counted, and its build asked for at the
        ``hot_launches``-th. Small launches of eager forward mode cost the device worker about
        10x what a graph's call does (0.6 ms against 0.06 at 16-576 samples of ``linear``), in
        the interpreter's lock that the event loop waits for."""
        if (kind, place) in self._graphs or (
                not kind.per_sample and (replace(kind, per_sample=True), place) in self._graphs):
            return True
        if not self.hot_launches or kind.source:  # (a count per caller's text would grow
            return False  # without bound: callers' expressions compile for large launches)
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
        graph, kind_served = self._graphs.get((kind, place)), kind
        if graph is None and not kind.per_sample:
            shared_as_per_sample = replace(kind, per_sample=True)
            graph, kind_served = self._graphs.get((shared_as_per_sample, place)), \
                shared_as_per_sample
        if graph is None:
            self.request(problem, order, cross)
            return None
        if kind_served.per_sample:
            problem = Problem(problem.routine, problem.inputs,
                              {k: v.expand(problem.n) if not v.dim() else v
                               for k, v in problem.params.items()}, problem.wrt)
        began = time.perf_counter()
        try:
            out = self._call(graph, problem)
            if problem.inputs.device.type == "cuda":  # timed to the end of its kernels
                torch.cuda.synchronize(problem.inputs.device)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:
            self._retire(kind_served, place, "recheck", f"its call failed: {exc}")
            return None
        key = (kind_served, place)
        if problem.n >= self.min_samples:  # what prices large requests: a small launch's
            # time is mostly its call's fixed cost, and would price them far over
            self._learn_rate(key, (time.perf_counter() - began) / problem.n)
        count = self._launches.get(key, 0)
        self._launches[key] = count + 1
        if count % self.recheck_every == 0:
            wrong = self._recheck(problem, kind_served, out)
            if wrong is not None:
                self._retire(kind_served, place, "recheck", wrong)
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

    def _call(self, graph: Graph, problem: Problem) -> tuple[Tensor, ...]:
        n = problem.n
        bounds = [*range(0, n, self.chunk), n]
        if len(bounds) > 2 and n - bounds[-2] < 2:  # no call of one sample: merge it
            del bounds[-2]
        parts = [graph(*columns(problem, slice(a, b))) for a, b in itertools.pairwise(bounds)]
        if len(parts) == 1:
            return parts[0]
        return tuple(torch.cat(ts) for ts in zip(*parts, strict=True))

    def _recheck(self, problem: Problem, kind: Kind, out: tuple[Tensor, ...]) -> str | None:
        """Compare a few rows of a launch with eager forward mode (the caller holds the
        transforms lock, as every launch does)."""
        n = problem.n
        idx = sorted({0, n // 3, 2 * n // 3, n - 1})[:_RECHECK_ROWS]
        rows = torch.tensor(idx, device=problem.inputs.device)
        params = {k: v[rows] if v.dim() else v for k, v in problem.params.items()}
        few = Problem(problem.routine, problem.inputs[rows], params, kind.wrt)
        return mismatch([t[rows] for t in out], eager_outputs(few, kind), output_names(kind))

    # -- building and swapping in ----------------------------------------------------------

    def request(self, problem: Problem, order: int = 1, cross: bool = False,
                device: torch.device | None = None) -> None:
        """Ask for the problem's kind (on ``device``, default the problem's) to be built,
        unless it is built, being built or refused (returns at once). An earlier build stored
        in the cache directory is taken as built."""
        kind = _kind(problem, order, cross, device)
        with self._lock:
            if kind in self._pending or kind in self._artefacts or kind in self._refused:
                return
            if len(self._artefacts) + len(self._pending) >= self.max_graphs:
                self._refuse(kind, "max_graphs", f"DYDC_COMPILE_MAX_GRAPHS={self.max_graphs} "
                             "graphs are built or being built")
                return
            self._routines[kind] = problem.routine
            found = cached(kind, problem.routine, self.cache_dir)
            if found is not None:
                done: Future[Artefact] = Future()
                done.set_result(found)
            else:
                done = self.builder.submit(kind, Samples.of(problem), problem.routine)
            self._pending[kind] = done
            self._unsettled.add(kind)
        asker = threading.get_ident()
        # run at once, in this thread, when the build is already done (found in the cache
        # directory): then nothing is loaded here (a device worker may be asking, in a launch)
        done.add_done_callback(lambda _: self._built(kind, ahead=threading.get_ident() != asker))

    def _built(self, kind: Kind, ahead: bool = True) -> None:
        """A build has finished: its graph is loaded for the devices served so far (with
        ``ahead``, in the builder's thread, once no large request is in progress) and
        published at their next :meth:`swap_in`, which loads what was not loaded ahead; or
        the kind is refused."""
        try:
            self._take(kind, ahead)
        finally:
            with self._lock:
                self._unsettled.discard(kind)
                self._settled.notify_all()

    def _take(self, kind: Kind, ahead: bool) -> None:
        # the kind stays pending until it is published or refused, so that nobody asks for
        # it again meanwhile
        with self._lock:
            try:
                artefact = self._pending[kind].result()
            except Exception as exc:  # refused, or the build process died or was stopped
                del self._pending[kind]
                if isinstance(exc, BuildRefused):
                    self._refuse(kind, exc.reason, str(exc))
                else:
                    self._refuse(kind, "compile", f"{type(exc).__name__}: {exc}")
                return
            devices = [d for d in self._devices if d.type == kind.device] if ahead else []
        if devices and self.pacer is not None:
            self.pacer.quiet(_LOAD_QUIET_WAIT_S)
        loaded = {}
        for device in devices:  # here, not in the device worker between its launches
            try:
                loaded[(kind, str(device))] = load(artefact, self.cache_dir, device)
            except Exception:  # swap_in tries again, and retires it if it fails there too
                log.debug("preloading %s failed", _describe(kind), exc_info=True)
        with self._lock:
            self._preloaded.update(loaded)
            self._artefacts[kind] = artefact
            del self._pending[kind]
        metrics.child(metrics.COMPILED_GRAPHS, kind.label).inc()
        if artefact.seconds:
            metrics.COMPILE_SECONDS.observe(artefact.seconds)
        log.info("compiled %s ready (%s)", _describe(kind),
                 f"built in {artefact.seconds:.1f} s" if artefact.seconds
                 else "from the cache directory")

    def swap_in(self, device: torch.device) -> int:
        """Take in the graphs built since the last call, for ``device``; returns how many.
        Call between launches: a graph built while the service ran was loaded when its build
        finished, in the builder's thread, so this only publishes it; one found in the cache
        directory (or not loaded ahead) is loaded here, in milliseconds. Never a build."""
        loaded = 0
        place = str(device)
        with self._lock:
            self._devices.add(device)
            fresh = [(kind, artefact, self._preloaded.pop((kind, place), None))
                     for kind, artefact in self._artefacts.items()
                     if kind.device == device.type and (kind, place) not in self._graphs]
        for kind, artefact, graph in fresh:
            try:
                self._graphs[(kind, place)] = graph if graph is not None else load(
                    artefact, self.cache_dir, device)
            except Exception as exc:
                self._retire(kind, place, "compile", f"loading it failed: {exc}")
                continue
            loaded += 1
        return loaded

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
        with self._settled:
            return self._settled.wait_for(lambda: not self._unsettled, timeout)

    def serving_large(self) -> contextlib.AbstractContextManager[None]:
        """Around the whole of a large request (decode, launch, encode): the build process
        runs only its share of the time meanwhile."""
        return contextlib.nullcontext() if self.pacer is None else self.pacer.large()

    def close(self) -> None:
        """Stop the build process (builds in progress are abandoned)."""
        if self.pacer is not None:
            self.pacer.close()
        self.builder.close()

    def _refuse(self, kind: Kind, reason: str, why: str) -> None:
        if kind in self._refused:
            return
        self._refused[kind] = reason
        metrics.child(metrics.COMPILE_REFUSALS, reason).inc()
        log.warning("%s runs eagerly (%s): %s", _describe(kind), reason,
                    why.split("\n")[0])

    def _retire(self, kind: Kind, place: str, reason: str, why: str) -> None:
        with self._lock:
            self._graphs.pop((kind, place), None)
            self._preloaded.pop((kind, place), None)
            self._artefacts.pop(kind, None)
            self._refuse(kind, reason, why)
            routine = self._routines.get(kind)
        if routine is not None:
            forget(kind, routine, self.cache_dir)


def _kind(problem: Problem, order: int, cross: bool, device: torch.device | None) -> Kind:
    """The problem's kind, on ``device`` where given (else the problem's own device)."""
    kind = kind_of(problem, order=order, cross=cross)
    return kind if device is None else replace(kind, device=device.type)


def _symmetric(by_name: dict[str, Tensor], key: str) -> Tensor:
    """A derivative by its key; d2y/db da is d2y/da db (a graph keys pairs in the routine's
    order of wrt, a request in its own)."""
    if key in by_name or "," not in key:
        return by_name[key]
    a, b = key.split(",")
    return by_name[pair_key(b, a)]


def _describe(kind: Kind) -> str:
    layout = "per-sample" if kind.per_sample else "shared"
    what = "forward mode" if kind.order == 1 else \
        f"order 2{' with cross terms' if kind.cross else ''}"
    features = f"; input features {', '.join(kind.features)}" if kind.features else ""
    return (f"{what} of routine {kind.routine} (wrt {', '.join(kind.wrt)}, {kind.dtype}, "
            f"{kind.device}, {layout} parameters{features})")
