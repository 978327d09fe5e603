"""Compiled forward mode built away from the serving path: in a process of its own, ahead of
time, into files that the service loads in milliseconds.

Why a process: PyTorch's forward-AD levels are process-wide and torch.compile is not
thread-safe (pytorch/pytorch#118260, #136833), so a build in a thread beside the device
workers would corrupt their tangents or be corrupted by them; a build inside a worker made the
launch that needed it, and every launch queued behind it, wait 2-20 s. One spawned process
(``concurrent.futures.ProcessPoolExecutor``, spawn context, one worker, niced) builds one
kind at a time.

Why AOTInductor rather than filling torch.compile's caches for the service to read: loading
from a warm Inductor cache still runs Dynamo, AOTAutograd and the trace (jvp) in the service,
0.2-7 s a kind (measured, docs/compiled.md), under the lock that every launch needs.
``torch._inductor.aoti_compile_and_package`` turns the exported graph (a dynamic batch
dimension) into a package whose ``aoti_load_package`` takes milliseconds, needs no Dynamo at
call time, and persists as a file across restarts.

A build: the routine found again by module and name (or, for a routine no module holds, a
caller's expression, rebuilt by its module from the data in its kind), its values traced; a
long loop is rolled (app.engine.compiled.rolled) and its step packaged, otherwise the whole of
forward mode is traced and packaged; the result checked against eager forward mode at two batch
sizes (app.engine.compiled.verification); then written to the cache directory under a name that
hashes the kind, the routine's code and the torch version. What fails is refused with a reason
(:data:`REASONS`) and served eagerly.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import inspect
import logging
import multiprocessing
import os
import pickle
import signal
import tempfile
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor
from torch.func import jvp
from torch.fx import GraphModule

from app import metrics
from app.engine.compiled.cache import use_private_compile_caches
from app.engine.compiled.rolled import RolledForward, find_loop
from app.engine.compiled.tracing import TRACE_N, trace
from app.engine.compiled.verification import mismatch
from app.engine.differentiation.bumping import derivative_name, pair_key, pairs
from app.engine.differentiation.input_sensitivities import derived, origin
from app.engine.differentiation.second_order import forward2
from app.engine.differentiation.strategies import Problem, forward
from routines import Routine

__all__ = [
    "MAX_OPERATIONS",
    "REASONS",
    "Artefact",
    "BuildRefused",
    "Builder",
    "InlineBuilder",
    "Kind",
    "ProcessBuilder",
    "Samples",
    "build",
    "canonical_cross",
    "columns",
    "eager_outputs",
    "kind_of",
    "load",
    "values_graph",
]

log = logging.getLogger(__name__)

# values graphs larger than this, with no loop to roll, stay eager: compiling logistic_rk4's
# forward mode whole (49,614 operations) had not finished after 5 minutes
MAX_OPERATIONS = 4_000
# why a kind runs eagerly (dydc_compile_refusals_total{reason})
REASONS = metrics.COMPILE_REFUSAL_REASONS
CHECK_SIZES = (5, 131)  # batch sizes at which a new graph is compared with eager forward mode
_FORMAT = 4  # bump when what a build writes changes (3: the rolled step divides by reciprocals;
# 4: CPU kernels in parallel, see _package)

Graph = Callable[[Tensor, dict[str, Tensor]], tuple[Tensor, ...]]


class BuildRefused(Exception):
    """A kind that will not be compiled; ``reason`` is one of REASONS."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason

    def __reduce__(self) -> tuple[type[BuildRefused], tuple[str, str]]:
        # from the build process back to the service: both arguments, not just the message
        return BuildRefused, (self.reason, str(self))


@dataclass(frozen=True)
class Kind:
    """What one graph serves: a routine (found again by a new process in ``module``), the
    parameters differentiated (in the routine's order, whatever order a request names them;
    none for plain evaluation, whose graph returns the values alone),
    dtype, device type, whether parameters come per sample (N,) or shared (0-d), the order,
    whether order 2 has the cross terms, and the input features taken as per-sample
    parameters (app.engine.differentiation.input_sensitivities: delta is a parameter of a derived
    routine). ``source``: for a routine that no module holds by name (a caller's
    expression), the data its module's ``rebuild`` makes it from (``Routine.source``)."""

    routine: str
    module: str
    wrt: tuple[str, ...]
    dtype: str
    device: str
    per_sample: bool
    order: int = 1
    cross: bool = False
    features: tuple[str, ...] = ()
    source: str = ""

    @property
    def label(self) -> str:
        """The routine as metrics name it: a routine made from a caller's data (named
        ``<form>-<hash>``) by its form alone, so that callers' texts cannot grow the metrics
        without bound."""
        return self.routine.partition("-")[0] if self.source else self.routine

    @property
    def outputs(self) -> tuple[str, ...]:
        """What its graph returns after the values: dy/da for each a in wrt, then at order 2
        the second derivatives keyed "a,b"."""
        if self.order == 1:
            return self.wrt
        return (*self.wrt, *(pair_key(a, b) for a, b in pairs(self.wrt, self.cross)))


def canonical_cross(wrt: tuple[str, ...], order: int, cross: bool) -> bool:
    """Whether a kind has cross terms: only order 2 has them, and with one name in wrt the
    diagonal is all there is."""
    return cross and order == 2 and len(wrt) > 1


def kind_of(problem: Problem, per_sample: bool | None = None, order: int = 1,
            cross: bool = False) -> Kind:
    """The problem's kind; parameters per sample if any one is (the shared ones then come
    expanded), unless ``per_sample`` says otherwise."""
    r = problem.routine
    base, features = origin(r)
    if per_sample is None:
        per_sample = any(v.dim() for v in problem.params.values())
    wrt = tuple(n for n in r.param_names if n in problem.wrt)
    return Kind(base.name, base.fn.__module__, wrt,
                str(problem.inputs.dtype).removeprefix("torch."), problem.inputs.device.type,
                per_sample, order, canonical_cross(wrt, order, cross), features,
                base.source or "")


@dataclass(frozen=True)
class Samples:
    """Rows a build traces and checks on (numpy: they travel to the build process)."""

    inputs: np.ndarray  # (n, D)
    params: dict[str, np.ndarray]  # 0-d (shared) or (n,) (per sample)

    @classmethod
    def of(cls, problem: Problem, rows: int = 64) -> Samples:
        """Up to ``rows`` rows spread over the problem's."""
        idx = torch.linspace(0, problem.n - 1, min(rows, problem.n)).round().long()
        idx = idx.to(problem.inputs.device)
        return cls(problem.inputs[idx].cpu().numpy(),
                   {k: (v[idx] if v.dim() else v).cpu().numpy()
                    for k, v in problem.params.items()})

    def problem(self, routine: Routine, kind: Kind, n: int) -> Problem:
        """The rows tiled to ``n``, as the kind has them (on its device type)."""
        reps = -(-n // len(self.inputs))
        dtype, device = getattr(torch, kind.dtype), torch.device(kind.device)
        x = torch.from_numpy(np.tile(self.inputs, (reps, 1))[:n]).to(device, dtype)
        params = {}
        for name, v in self.params.items():
            t = torch.from_numpy(np.tile(v, reps)[:n] if v.ndim else v).to(device, dtype)
            params[name] = t.expand(n).contiguous() if kind.per_sample and not t.dim() else t
        return Problem(routine, x, params, kind.wrt)


@dataclass(frozen=True)
class Artefact:
    """A built kind: ``package`` (a file in the cache directory) holds the whole of forward
    mode, or the step of ``rolled``'s loop."""

    kind: Kind
    package: str
    rolled: RolledForward | None
    seconds: float


def columns(problem: Problem, rows: slice) -> tuple[Tensor, dict[str, Tensor]]:
    """A graph's arguments: inputs (D, N) contiguous. One column is a view, and so are
    inputs that are already columns seen transposed (a scenarios job's); other columns are
    stacked, which copies them 7x faster than ``.t().contiguous()`` (0.07 against 0.5 ms for
    1e5 x 2 here)."""
    params = {name: v[rows].contiguous() if v.dim() else v for name, v in problem.params.items()}
    x = problem.inputs[rows]
    cols = x.t()
    return (cols if cols.is_contiguous() else torch.stack(x.unbind(1))), params


def _forward_by_columns(routine: Routine, wrt: tuple[str, ...]) -> Graph:
    """Values and one tangent per parameter, from inputs given as columns (D, N); with no
    wrt, the values alone (plain evaluation's graph)."""

    def run(columns: Tensor, params: dict[str, Tensor]) -> tuple[Tensor, ...]:
        x = columns.t()
        if not wrt:
            return (Problem(routine, x, params, ()).evaluate(),)
        pushed = {name: forward(Problem(routine, x, params, (name,))) for name in wrt}
        return (pushed[wrt[0]].values, *(d.derivatives[name] for name, d in pushed.items()))

    return run


def _second_by_columns(kind: Kind, first: Graph) -> Graph:
    """Values, first and second derivatives from the traced first order: one jvp of it per
    direction b, whose tangents are d2y/da db for every a (the pairs of ``kind.outputs``)."""
    index = {name: i for i, name in enumerate(kind.wrt)}
    wanted = pairs(kind.wrt, kind.cross)

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


def eager_outputs(problem: Problem, kind: Kind) -> tuple[Tensor, ...]:
    """What the kind's graph computes, by eager forward mode: the values, then
    ``kind.outputs`` (the problem's wrt is the kind's); with no wrt, plain evaluation's
    values alone."""
    if not kind.wrt:
        return (problem.evaluate(),)
    got = forward2(problem, kind.cross) if kind.order == 2 else forward(problem)
    return (got.values, *(got.derivatives[name] for name in kind.outputs))


def output_names(kind: Kind) -> tuple[str, ...]:
    """The outputs as a person reads them: values, dy/da, d2y/da db."""
    return ("values", *(derivative_name(k) for k in kind.outputs))


def _examples(problem: Problem) -> tuple[Tensor, dict[str, Tensor]]:
    """Stand-ins for a graph's arguments at TRACE_N samples: inputs as columns (D, N), and
    the parameters, per-sample ones (N,)."""
    x = problem.inputs
    cols = torch.empty((len(problem.routine.inputs), TRACE_N), dtype=x.dtype, device=x.device)
    params = {name: torch.empty(TRACE_N, dtype=v.dtype, device=v.device) if v.dim() else v
              for name, v in problem.params.items()}
    return cols, params


def forward_graph(problem: Problem) -> GraphModule:
    """The problem's forward mode as a graph of plain tensor operations, for any N."""
    return trace(_forward_by_columns(problem.routine, problem.wrt), *_examples(problem))


def values_graph(problem: Problem) -> GraphModule:
    """The routine's values alone (no tangents) as a graph, for any N: its inputs are the
    columns, then the parameters in the problem's order."""
    from app.engine.differentiation.evaluation import evaluate_batch

    routine, names = problem.routine, tuple(problem.params)
    cols, params = _examples(problem)

    def values(columns: Tensor, *params: Tensor) -> Tensor:
        return evaluate_batch(routine, columns.t(), dict(zip(names, params, strict=True)))

    return trace(values, cols, *params.values())


def _package(gm: GraphModule, args: Any, path: Path) -> None:
    """``gm`` exported with every dimension of size TRACE_N as one dynamic batch size, and
    compiled ahead of time into the package ``path`` (written whole or not at all).

    CPU kernels are generated with Inductor's ``cpp.dynamic_threads``: each loop nest in an
    OpenMP parallel region sized at run time by the calling thread (the device worker: torch's
    intra-op threads, DYDC_TORCH_THREADS). Without it Inductor sizes the loops for the threads
    of the process that builds, and the build process runs one thread, so every graph ran on one
    core (exponential_decay at 1e6: 2.7 ms, 1.5 ms in parallel on two cores). A launch below
    a grain of samples runs its regions on one thread (app.engine.compiled.threads)."""
    n = torch.export.Dim("n", min=2, max=2**40)
    dynamic = torch.utils._pytree.tree_map(
        lambda a: {d: n for d, s in enumerate(a.shape) if s == TRACE_N} or None
        if isinstance(a, Tensor) else None, args)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.pt2")
    with warnings.catch_warnings():
        # torch.export's own use of a pytree API it deprecates (torch 2.13): not ours to fix,
        # and an error where warnings are errors (the test suite builds in-process too)
        warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
        exported = torch.export.export(gm, tuple(args), dynamic_shapes=tuple(dynamic),
                                       strict=False)
        with torch._inductor.config.patch({"cpp.dynamic_threads": True}):
            torch._inductor.aoti_compile_and_package(exported, package_path=str(tmp))
    os.replace(tmp, path)


def _load_package(path: Path, device_index: int) -> Callable[..., Any]:
    loaded: Callable[..., Any] = torch._inductor.aoti_load_package(
        str(path), device_index=device_index)
    return loaded


def load(artefact: Artefact, cache_dir: Path, device: torch.device) -> Graph:
    """The artefact as a callable on ``device``: (columns (D, N), params) -> the values, then
    ``artefact.kind.outputs``."""
    package = _load_package(cache_dir / artefact.package,
                            -1 if device.index is None else device.index)
    if artefact.rolled is not None:
        rolled: RolledForward = pickle.loads(pickle.dumps(artefact.rolled))  # its own copy
        rolled.attach(lambda *flat: tuple(package(*flat)))
        return rolled

    def call(cols: Tensor, params: dict[str, Tensor]) -> tuple[Tensor, ...]:
        return tuple(package(cols, params))

    return call


def _identity(kind: Kind, routine: Routine) -> str:
    """A file name for the kind's artefact that changes with the routine's code (its
    function's and its module's source) and with torch. A derived routine (input features as
    parameters) is named by the routine it derives from: the kind holds its features."""
    routine, _ = origin(routine)
    fn = routine.fn
    parts: list[Any] = [_FORMAT, torch.__version__, TRACE_N, kind, routine.inputs,
                        routine.outputs, routine.vectorized]
    if routine.source is not None:  # rebuilt from the kind's data by its module's package:
        # the code of the whole package (a closure's cells hold its objects, not their code)
        parts.extend(_package_sources(fn))
        cells: tuple[Any, ...] = ()
    else:
        for obj in (fn, inspect.getmodule(fn)):
            try:
                parts.append(inspect.getsource(obj))  # type: ignore[arg-type]
            except (OSError, TypeError):
                parts.append(fn.__code__.co_code)
        cells = fn.__closure__ or ()
    for cell in cells:  # a closure's tensor constants
        with contextlib.suppress(ValueError):
            value = cell.cell_contents
            parts.append(value.cpu().numpy().tobytes() if isinstance(value, Tensor)
                         else repr(value))
    digest = hashlib.sha256(repr(parts).encode()).hexdigest()[:24]
    return f"{kind.routine}-{kind.dtype}-{kind.device}-{digest}"


def _package_sources(fn: Callable[..., Any]) -> list[str]:
    """The text of every module in the package of ``fn``'s module."""
    module = inspect.getmodule(fn)
    file = getattr(module, "__file__", None)
    if file is None:
        return [fn.__code__.co_code.hex()]
    return [p.read_text() for p in sorted(Path(file).parent.glob("*.py"))]


def cached(kind: Kind, routine: Routine, cache_dir: Path) -> Artefact | None:
    """The kind's artefact from an earlier build, if the cache directory holds it."""
    path = cache_dir / f"{_identity(kind, routine)}.artefact"
    try:
        with path.open("rb") as f:
            artefact: Artefact = pickle.load(f)
    except FileNotFoundError:
        return None
    except Exception as exc:  # unreadable: build it again
        log.warning("compiled artefact %s unreadable (%s); building it again", path, exc)
        return None
    if not isinstance(artefact, Artefact):  # not one (the request had failed on it, a 422)
        log.warning("compiled artefact %s holds a %s; building it again", path,
                    type(artefact).__name__)
        return None
    if artefact.kind != kind or not (cache_dir / artefact.package).is_file():
        return None
    return replace(artefact, seconds=0.0)


def forget(kind: Kind, routine: Routine, cache_dir: Path) -> None:
    """Remove the kind's artefact (a retired graph must not come back at the next start)."""
    stem = _identity(kind, routine)
    for suffix in (".artefact", ".pt2"):
        with contextlib.suppress(FileNotFoundError):
            (cache_dir / f"{stem}{suffix}").unlink()


def locate(kind: Kind) -> Routine:
    """The kind's routine, found in its module by name (in a new process too), or made
    again by its module's ``rebuild`` from the kind's ``source``."""
    module = importlib.import_module(kind.module)
    if kind.source:
        base = _rebuilt(module, kind)
        return derived(base, kind.features) if kind.features else base
    for obj in vars(module).values():
        if isinstance(obj, Routine) and obj.name == kind.routine:
            return derived(obj, kind.features) if kind.features else obj
    raise BuildRefused("trace", f"routine {kind.routine} is not a module-level name of "
                                f"{kind.module}, where a build process looks for it")


def _rebuilt(module: Any, kind: Kind) -> Routine:
    """The routine that ``module.rebuild`` makes from the kind's source, which must be the
    kind's routine (the same name: the same text and declaration)."""
    rebuild = getattr(module, "rebuild", None)  # a fixed name, in our own module
    if not callable(rebuild):
        raise BuildRefused("trace", f"routine {kind.routine}: {kind.module} has no rebuild "
                                    "to make it from its source")
    try:
        made = rebuild(kind.source)
    except Exception as exc:
        raise BuildRefused("trace", f"routine {kind.routine} could not be rebuilt from its "
                                    f"source: {_say(exc)}") from exc
    if not isinstance(made, Routine) or made.name != kind.routine:
        raise BuildRefused("trace", f"routine {kind.routine}: its source rebuilt "
                                    f"{getattr(made, 'name', made)!r} instead")
    return made


def build(kind: Kind, samples: Samples, cache_dir: str | Path,
          routine: Routine | None = None) -> Artefact:
    """Build, check and store the kind's compiled forward mode (or find it stored); raises
    BuildRefused. In the calling process, on the kind's device type."""
    started = time.perf_counter()
    cache = Path(cache_dir)
    routine = routine if routine is not None else locate(kind)
    found = cached(kind, routine, cache)
    if found is not None:
        return found
    stem = _identity(kind, routine)
    problem = samples.problem(routine, kind, CHECK_SIZES[-1])
    try:
        graph = values_graph(problem)
    except Exception as exc:
        raise BuildRefused("trace", _say(exc)) from exc
    loop = find_loop(graph.graph) if kind.order == 1 else None
    package = f"{stem}.pt2"
    rolled: RolledForward | None = None
    if loop is not None:
        def compile_step(gm: GraphModule, args: list[Tensor]) -> Callable[..., Any]:
            _package(gm, args, cache / package)
            loaded = _load_package(cache / package, -1)  # the current device
            return lambda *flat: tuple(loaded(*flat))

        try:
            rolled = RolledForward(graph, loop, tuple(problem.params), kind.wrt, compile_step)
            rolled(*columns(problem, slice(None)))  # packages the step for these tangents
        except BuildRefused:
            raise
        except Exception as exc:
            raise BuildRefused("compile", _say(exc)) from exc
    else:
        operations = sum(node.op == "call_function" for node in graph.graph.nodes)
        if operations > MAX_OPERATIONS:
            raise BuildRefused("operations", f"its values trace to {operations:,} operations "
                               f"with no loop to roll (more than {MAX_OPERATIONS:,} are not "
                               "compiled whole)")
        try:
            whole = forward_graph(problem)
            if kind.order == 2:  # forward mode of the traced forward mode: nesting jvp in one
                # trace leaves an operation Inductor cannot take with a symbolic N
                whole = trace(_second_by_columns(kind, whole), *_examples(problem))
        except Exception as exc:
            raise BuildRefused("trace", _say(exc)) from exc
        try:
            _package(whole, _examples(problem), cache / package)
        except Exception as exc:
            raise BuildRefused("compile", _say(exc)) from exc
    artefact = Artefact(kind, package, rolled, 0.0)
    try:
        compiled = load(artefact, cache, torch.device(kind.device))
        for n in CHECK_SIZES:
            check(compiled, samples.problem(routine, kind, n), kind)
    except BuildRefused:
        forget(kind, routine, cache)
        raise
    artefact = replace(artefact, seconds=time.perf_counter() - started)
    tmp = cache / f".{stem}.{os.getpid()}.artefact"
    with tmp.open("wb") as f:
        pickle.dump(artefact, f)
    os.replace(tmp, cache / f"{stem}.artefact")
    return artefact


def check(graph: Graph, problem: Problem, kind: Kind) -> None:
    """Raise BuildRefused("verification") unless the graph gives eager forward mode's numbers
    on the problem (app.engine.compiled.verification)."""
    try:
        got = graph(*columns(problem, slice(None)))
    except Exception as exc:
        raise BuildRefused("verification", f"the compiled graph failed at N = {problem.n}: "
                                           f"{_say(exc)}") from exc
    wrong = mismatch(got, eager_outputs(problem, kind), output_names(kind))
    if wrong is not None:
        raise BuildRefused("verification", f"at N = {problem.n}: {wrong}")


def _say(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".split("\n")[0]


class Builder(Protocol):
    """Where builds run: ``submit`` returns at once."""

    cache_dir: Path

    def submit(self, kind: Kind, samples: Samples, routine: Routine) -> Future[Artefact]: ...

    def start(self) -> None:
        """Start what runs the builds now rather than at the first build; returns at once."""

    def close(self) -> None: ...


class InlineBuilder:
    """Builds in the calling thread, before ``submit`` returns: for tests that need the
    caller's state (a monkeypatched routine) and for tools. Hold the transforms lock."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = cache_dir

    def submit(self, kind: Kind, samples: Samples, routine: Routine) -> Future[Artefact]:
        done: Future[Artefact] = Future()
        try:
            done.set_result(build(kind, samples, self.cache_dir, routine))
        except Exception as exc:
            done.set_exception(exc)
        return done

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass


def _start_build_process(cache_dir: str, threads: int, niceness: int,
                         idle: bool = False) -> None:
    """In the build process: lower priority than the service (and with ``idle``, Linux's
    SCHED_IDLE policy, which its compilers inherit: only CPU time nothing else wants), a
    process group of its own (which its compilers join, so that the service can stop and
    continue them together), few threads, and PyTorch's compile caches inside the private
    cache directory instead of /tmp (unless the operator set TORCHINDUCTOR_CACHE_DIR or
    TRITON_CACHE_DIR)."""
    with contextlib.suppress(OSError):
        os.nice(niceness)
    with contextlib.suppress(OSError, AttributeError):
        os.setpgid(0, 0)  # a group of its own, its compilers with it: paced as one (pacing.py)
    if idle and hasattr(os, "SCHED_IDLE"):
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    use_private_compile_caches(cache_dir)  # (the service's already: kept; an operator's too)
    torch.set_num_threads(threads)


class ProcessBuilder:
    """One spawned process that builds one kind at a time (started at the first build, or
    by :meth:`start`)."""

    def __init__(self, cache_dir: Path, threads: int = 1, niceness: int = 10,
                 idle: bool = False) -> None:
        self.cache_dir = cache_dir
        self._threads, self._niceness, self._idle = threads, niceness, idle
        self._executor: ProcessPoolExecutor | None = None

    def submit(self, kind: Kind, samples: Samples, routine: Routine) -> Future[Artefact]:
        return self.pool().submit(build, kind, samples, str(self.cache_dir))

    def start(self) -> None:
        """Start the build process now (warm-up does, before the service is ready): its own
        start, Python's and torch's imports, about a second of CPU, then falls beside no
        large request, as it would at the first build of a kind found in no cache."""
        self.pool().submit(os.getpid)

    def pool(self) -> ProcessPoolExecutor:
        """The build process (started, or started again after it died, here)."""
        if self._executor is None or getattr(self._executor, "_broken", False):
            self._executor = ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_build_process,
                initargs=(str(self.cache_dir), self._threads, self._niceness, self._idle))
        return self._executor

    def process(self) -> int | None:
        """The build process's pid, while it runs (None before it started)."""
        executor = self._executor
        if executor is None:
            return None
        for process in list(getattr(executor, "_processes", {}).values()):  # no public handle
            pid: int | None = process.pid
            if pid is not None and process.is_alive():
                return pid
        return None

    def process_group(self) -> int | None:
        """The build process's own process group, once it has one (its start-up makes it;
        the service's own group is never handed out)."""
        pid = self.process()
        if pid is None:
            return None
        try:
            group = os.getpgid(pid)
        except OSError:
            return None
        return group if group == pid and group != os.getpgrp() else None

    def close(self) -> None:
        """Stop at once: a build in progress is abandoned (its files are written whole or not
        at all)."""
        group = self.process_group()
        executor, self._executor = self._executor, None
        if executor is None:
            return
        processes = list(getattr(executor, "_processes", {}).values())  # no public handle
        executor.shutdown(wait=False, cancel_futures=True)
        if group is not None:  # its compilers too, and continued if it was stopped (pacing)
            for sig in (signal.SIGTERM, signal.SIGCONT):
                with contextlib.suppress(OSError):
                    os.killpg(group, sig)
        for p in processes:
            p.terminate()
        for p in processes:
            p.join(5)


def private_tempdir() -> Path:
    """A fresh directory of ours, mode 0700 (tempfile.mkdtemp), for a cache that need not
    outlive the process."""
    return Path(tempfile.mkdtemp(prefix="dydc-compile-"))
