"""Running jobs on a device: one launch for a coalesced batch, chunks for a large request,
compiled graphs first (the mathematics, with its auto fallback, is app.engine.differentiation),
and the checks on what comes back.

An :class:`Executor` is one device's runner: its device, its largest launch (``chunk``) and
the compiled graphs its forward mode may use travel together, and every run of a job goes
through one (one per device worker, app.engine.runtime.worker).

A batch of several requests is one Problem whose parameters hold one value per sample (or a
shared 0-d value where every request agrees). Row i of every routine depends only on sample
i, so the results split back by row counts. Whatever goes wrong for the batch as a whole is
retried request by request, so that one bad request never fails its batch mates.
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from app.engine.compiled.forward import CompiledForward, runs_through_graphs
from app.engine.differentiation.bumping import Bump, derivative_name
from app.engine.differentiation.differentiate import TRANSFORMS_LOCK, differentiate
from app.engine.differentiation.input_sensitivities import with_features_as_params
from app.engine.differentiation.strategies import (
    STRATEGIES,
    Derivatives,
    Problem,
    Steps,
    drain,
    lacks_forward_formula,
)
from app.engine.errors import (
    EngineError,
    InvalidRequest,
    NonFinite,
    RoutineFailed,
    ServiceUnavailable,
)
from app.engine.runtime.jobs import Job, JobKind, JobResult

__all__ = [
    "Executor",
    "Sliced",
    "batch_key",
    "run_strategy",
]


def batch_key(job: Job) -> tuple[object, ...] | None:
    """Jobs with equal keys can share a launch; None for jobs that always run alone."""
    if job.kind is JobKind.SENSITIVITIES:
        assert job.strategy is not None
        if not STRATEGIES[job.strategy].batchable:
            return None
        if job.routine.vectorized and job.strategy == "jacfwd":
            return None
    return (job.kind, job.routine.name, job.dtype, job.wrt, job.strategy, job.order, job.cross)


def run_strategy(problem: Problem, strategy: str, compiled: CompiledForward | None = None,
                 *, order: int = 1, cross: bool = False,
                 bump: Bump | None = None) -> tuple[Derivatives, str]:
    """:func:`~app.engine.differentiation.differentiate.differentiate`, with forward mode
    (``auto`` or ``forward``) through a compiled graph where ``compiled`` serves the problem.
    Returns the derivatives (second ones keyed "a,b") and the strategy that ran."""
    result, ran, _ = _differentiated(problem, strategy, compiled, order, cross, bump)
    return result, ran


def _differentiated(problem: Problem, strategy: str, compiled: CompiledForward | None,
                    order: int, cross: bool, bump: Bump | None,
                    ) -> tuple[Derivatives, str, bool]:
    """:func:`run_strategy`, and whether a compiled graph ran it (its time says nothing of
    eager speed, which the cost model learns)."""
    result = _through_graph(problem, strategy, compiled, order, cross)
    if result is not None:
        return result, "forward", True
    result, ran = differentiate(problem, strategy, order=order, cross=cross, bump=bump)
    return result, ran, False


def _through_graph(problem: Problem, strategy: str, compiled: CompiledForward | None,
                   order: int, cross: bool) -> Derivatives | None:
    """Compiled forward mode (app.engine.compiled.forward), at order 1 or 2, over parameters and
    input features alike, for ``auto`` or ``forward``; None where it does not apply or its
    graph is not loaded yet."""
    if not runs_through_graphs(strategy) or compiled is None \
            or not compiled.applies(problem, order, cross):
        return None
    return compiled.run(problem, order, cross)


def _evaluate(problem: Problem, compiled: CompiledForward | None) -> tuple[Tensor, bool]:
    """Plain evaluation (the problem has no wrt): through the routine's compiled values graph
    where one serves the launch (a large one; the first asks for its build), else eagerly;
    and whether a graph ran it."""
    if compiled is not None and compiled.applies(problem):
        result = compiled.run(problem)
        if result is not None:
            return result.values, True
    return problem.evaluate(), False


@dataclass(frozen=True)
class _Output:
    values: Tensor  # (N, M) on the CPU
    derivatives: dict[str, Tensor]
    strategy: str | None
    graph: bool = False  # a compiled graph ran it (its time says nothing of eager speed)

    def all_finite(self) -> bool:
        """One check for the whole launch; requests are checked one by one only if it fails."""
        return all(_finite(t) for t in (self.values, *self.derivatives.values()))


def _params(jobs: Sequence[Job], device: torch.device) -> dict[str, Tensor]:
    """0-d where every job shares one value, else one value per sample."""
    first = jobs[0]
    out: dict[str, Tensor] = {}
    for name in first.params:
        values = [job.params[name] for job in jobs]
        if len(values) == 1 and isinstance(values[0], np.ndarray):  # no copy of its own
            per_sample = values[0]
        elif any(isinstance(v, np.ndarray) for v in values):  # per-sample values in a request
            per_sample = np.concatenate([v if isinstance(v, np.ndarray) else np.full(job.n, v)
                                         for v, job in zip(values, jobs, strict=True)])
        elif all(v == values[0] for v in values):
            out[name] = torch.tensor(values[0], dtype=first.dtype, device=device)
            continue
        else:  # numpy: torch.repeat_interleave with a tensor of counts costs ~0.5 ms
            per_sample = np.repeat(np.asarray(values, dtype=np.float64),
                                   [job.n for job in jobs])
        out[name] = torch.from_numpy(per_sample).to(device, first.dtype)
    return out


@contextmanager
def _translated(job: Job) -> Iterator[None]:
    """Engine errors pass through; what the routine raises is wrapped, saying what to do."""
    try:
        yield
    except (EngineError, torch.cuda.OutOfMemoryError):
        raise
    except NotImplementedError as exc:
        hint = ("; use strategy=auto or a reverse strategy, or finite-difference where "
                "reverse mode lacks a formula too" if lacks_forward_formula(exc)
                else "; use strategy=finite-difference, which needs no derivative formula"
                if job.strategy != "finite-difference" else "")
        said = f"{exc}".split("\n")[0].rstrip(". ")
        raise InvalidRequest(f"strategy {job.strategy} cannot differentiate routine "
                             f"{job.routine.name}: {said}{hint}") from exc
    except Exception as exc:
        raise RoutineFailed(
            f"{job.routine.called} failed under strategy {job.strategy or 'evaluate'}: "
            f"{type(exc).__name__}: {exc}".split("\n")[0]
        ) from exc


def _problem(jobs: Sequence[Job], inputs: Tensor, device: torch.device) -> Problem:
    """The launch's problem; input features in wrt become per-sample parameters."""
    return with_features_as_params(Problem(
        jobs[0].routine, inputs.to(device, non_blocking=True), _params(jobs, device),
        jobs[0].wrt))


def _output(job: Job, values: Tensor, derivs: dict[str, Tensor], ran: str | None,
            graph: bool = False) -> _Output:
    return _Output(_to_host(values, job.dtype),
                   {name: _to_host(d, job.dtype) for name, d in derivs.items()}, ran, graph)


def _compute(jobs: Sequence[Job], inputs: Tensor, ex: Executor) -> _Output:
    """One launch. Engine errors pass through; what the routine raises is wrapped."""
    job = jobs[0]
    problem = _problem(jobs, inputs, ex.device)
    with _translated(job), TRANSFORMS_LOCK:
        if job.kind is JobKind.EVALUATE:
            (values, graph), derivs, ran = _evaluate(problem, ex.compiled), {}, None
        else:
            assert job.strategy is not None
            result, ran, graph = _differentiated(problem, job.strategy, ex.compiled, job.order,
                                                 job.cross, job.bump)
            values, derivs = result.values, result.derivatives
    return _output(job, values, derivs, ran, graph)


def _to_host(t: Tensor, dtype: torch.dtype) -> Tensor:
    """On the CPU in ``dtype``, with no torch call where it already is (see all_finite)."""
    if t.requires_grad:
        t = t.detach()
    if t._is_zerotensor():  # forward mode's symbolic zero (d2y/dC2 of y = C x): no buffer, so
        # nothing can read it as an array (numpy, the binary codec): a real one of zeros
        return torch.zeros(t.shape, dtype=dtype)
    if t.device.type == "cpu" and t.dtype == dtype:
        return t
    return t.to("cpu", dtype)


def _rows(job: Job, rows: slice) -> Job:
    """The part of a job that one chunk computes: its inputs and per-sample values."""
    if rows == slice(0, job.n):
        return job
    params = {k: v[rows] if isinstance(v, np.ndarray) else v for k, v in job.params.items()}
    return replace(job, inputs=job.inputs[rows], params=params)


# Samples per launch where reverse mode or nested AD keeps every step's intermediates for
# each sample, without a compiled graph: second derivatives (vmap-grad's Hessian of
# logistic_rk4: about 400 KB a sample, 6 GB for 15,000) and reverse mode's first ones
# (vmap-grad of logistic_rk4 at 200,000 samples went past 24 GB). A whole large job could
# exhaust the host's memory in one launch, and one launch cannot be stopped at its deadline
# or its cost; in chunks it can.
SECOND_ORDER_CHUNK = 2048
REVERSE_CHUNK = 16_384


def memory_chunk(job: Job) -> int | None:
    """The most samples one launch of ``job`` may take for its memory, or None (no bound but
    DYDC_MAX_BATCH_SAMPLES)."""
    if job.order == 2:
        return SECOND_ORDER_CHUNK
    strategy = STRATEGIES[job.strategy] if job.strategy is not None else None
    if strategy is not None and strategy.mode == "reverse" and strategy.steps is None:
        return REVERSE_CHUNK
    return None


# The fewest samples a launch is cut to by its price: below a few thousand, a launch's time
# is mostly its fixed part (Python and torch's overhead per operation, the same for 40 samples
# as for 4,000), which smaller launches only repeat (an ODE's 40-sample Hessian, priced over a
# slice, was cut in launches of 2 samples, and stopped as overrunning its price 20 times over).
PRICED_CHUNK_MIN = 4096


def _chunk(job: Job, ex: Executor, sliced: bool = False) -> int:
    """Samples per launch: DYDC_MAX_BATCH_SAMPLES, or the whole job where a compiled graph on
    the CPU serves its kind and, at the rate its launches took so far, runs it within
    ``ex.whole_s`` (a heavy job's slice): chunks would only add a copy of every output to join
    them (``linear`` at 1e6: 4 chunks and the join 4.1 ms, JAX 1.2 ms). On a GPU chunks also
    bound memory, and stay. What no graph runs goes in chunks of at most its
    :func:`memory_chunk`."""
    bound = memory_chunk(job)
    eager = ex.chunk if bound is None else min(ex.chunk, bound)  # without a graph
    if sliced and job.cost_s > ex.whole_s > 0:  # eager launches of about a slice, by price
        eager = min(eager, max(PRICED_CHUNK_MIN, int(job.n * ex.whole_s / job.cost_s)))
    if job.n <= eager:
        return ex.chunk
    seconds = None  # a compiled graph's rate for the job's kind, once it has one
    if ex.compiled is not None and runs_through_graphs(job.strategy):
        problem = _problem([job], job.inputs, ex.device)
        seconds = ex.compiled.launch_seconds(problem, ex.device, job.order, job.cross)
        if seconds is None and job.n >= ex.compiled.min_samples \
                and ex.compiled.applies(problem, job.order, job.cross):
            # its launches without the graph are smaller than those that ask for one (second
            # derivatives: 2,048 samples), so the job asks: the next such job runs through it
            ex.compiled.request(problem, job.order, job.cross, ex.device)
    if seconds is None:
        return eager
    if job.n <= ex.chunk or ex.device.type != "cpu" or ex.whole_s <= 0:
        return ex.chunk
    return job.n if 0 < seconds <= ex.whole_s else ex.chunk


def _chunks(job: Job, ex: Executor, sliced: bool = False) -> Generator[float, None, _Output]:
    """A request larger than a launch runs in chunks, yielding the fraction done after each
    (``sliced``: a heavy job, whose eager chunks are also priced at about a slice each);
    CUDA running out of memory halves the chunk and retries, down to one sample, before the
    request is refused."""
    parts: list[_Output] = []
    start, chunk = 0, _chunk(job, ex, sliced)
    while start < job.n:
        size = min(chunk, job.n - start)
        try:
            part = _rows(job, slice(start, start + size))
            parts.append(_compute([part], part.inputs, ex))
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            if chunk == 1:
                raise ServiceUnavailable(
                    f"out of memory on {ex.device} even one sample at a time; retry later"
                ) from None
            chunk = max(1, chunk // 2)
            continue
        start += size
        if start < job.n:
            yield start / job.n
    if len(parts) == 1:
        return parts[0]
    return _Output(
        torch.cat([p.values for p in parts]),
        {name: torch.cat([p.derivatives[name] for p in parts]) for name in parts[0].derivatives},
        parts[0].strategy,
        any(p.graph for p in parts),
    )


def _steps(job: Job, device: torch.device, slice_s: float) -> Generator[float, None, _Output]:
    """An O(N^2) strategy in its own slices, each under the transforms lock."""
    assert job.strategy is not None
    steps = STRATEGIES[job.strategy].steps
    assert steps is not None
    running = steps(_problem([job], job.inputs, device), slice_s)
    while True:
        with _translated(job), TRANSFORMS_LOCK:
            progress, result = _step(running)
        if result is not None:
            return _output(job, result.values, result.derivatives, job.strategy)
        if progress < 1:
            yield progress


def _step(steps: Steps) -> tuple[float, Derivatives | None]:
    """One slice: (fraction done, None), or (1, the result) once the steps are over."""
    try:
        return next(steps), None
    except StopIteration as done:
        return 1.0, done.value


_SUM_FIRST = 1 << 16  # entries from which a tensor's finiteness is tried by its sum first


def _finite(t: Tensor) -> bool:
    """Whether every entry of ``t`` (on the host) is finite. A large tensor is summed first:
    a NaN or an infinity makes the sum non-finite, so a finite sum proves it (and a sum that
    overflows leaves it to the exact test); 0.2 ms for 1e6 float64 here, where
    ``torch.isfinite(t).all()`` took 2.6 ms and numpy's 1.0. A small one goes to numpy, whose
    calls keep the GIL, where each torch call would hand it to the event loop's thread and wait
    to get it back."""
    if t.numel() >= _SUM_FIRST and math.isfinite(t.sum()):
        return True
    return bool(np.isfinite(t.numpy()).all())


def _first_non_finite(t: Tensor) -> int | None:
    """The first sample with a non-finite entry, or None."""
    if _finite(t):
        return None
    a = t.numpy()
    return int(np.flatnonzero(~np.isfinite(a.reshape(a.shape[0], -1)).all(axis=1))[0])


def _check_finite(job: Job, name: str, t: Tensor) -> None:
    i = _first_non_finite(t)
    if i is not None:
        sample = dict(zip(job.routine.inputs, job.inputs[i].tolist(), strict=True))
        params = {k: float(v[i]) if isinstance(v, np.ndarray) else v
                  for k, v in job.params.items()}  # (this sample's, not every sample's)
        # forward mode carries every wrt entry's partials together: one not defined at this
        # sample (x ** C at x < 0: dy/dC) makes the others NaN as well (0 x NaN)
        together = (len(job.wrt) > 1 and name != "value"
                    and job.strategy in (None, "auto", "forward", "forward-dual"))
        hint = (f"; in forward mode one derivative not defined here (of "
                f"{', '.join(job.wrt)}) makes the others so too: ask for one wrt at a time "
                "to see which" if together else "")
        if job.strategy == "finite-difference" and name != "value":  # (the value is finite)
            hint += ("; finite differences bump a wrt entry to both sides of its value, and a "
                     "bumped point outside the routine's domain gives this: bump one side only "
                     "(scheme=forward or scheme=backward) or use an AD strategy")
        elif job.strategy in ("reverse-loop", "reverse-batched", "jacrev") and name != "value":
            hint += ("; in reverse mode a shared parameter's derivative passes back through "
                     "every sample, so one sample's undefined derivative makes every sample's "
                     "so: the sample at fault may be another (strategy=vmap-grad names it)")
        raise NonFinite(
            f"{job.routine.called} gave a non-finite {name} for sample {i} "
            f"(inputs {sample}, params {params}); check that the inputs and parameters "
            f"are inside its domain{hint}", i, name)


def _result(job: Job, out: _Output, device: torch.device, started: float, finished: float,
            checked: bool = False) -> JobResult:
    values, derivs = out.values, out.derivatives
    if not checked:
        _check_finite(job, "value", values)
        for name, d in derivs.items():
            _check_finite(job, derivative_name(name), d)
    first = {name: d for name, d in derivs.items() if "," not in name}
    second = {name: d for name, d in derivs.items() if "," in name}
    return JobResult(values=values, derivatives=first, strategy=out.strategy,
                     device=str(device), queue_s=started - job.enqueued_at,
                     compute_s=finished - started, second_derivatives=second, graph=out.graph)


Sliced = Generator[float, None, JobResult]


@dataclass(frozen=True)
class Executor:
    """One device's runner: its device, the largest launch in samples (``chunk``: a request
    larger runs in several, unless a compiled graph runs it within ``whole_s``), and the
    compiled graphs its forward mode may use (``compiled``, shared by the devices: one build
    process, graphs loaded per device).

    A launch runs under TRANSFORMS_LOCK, which is process-wide rather than the executor's:
    PyTorch's transform and forward-AD levels are process-wide, so no two devices may trace
    at once (warm-up and cost measurements take it too). Builds never do: they run in the
    build process, and :meth:`swap_in` loads them between launches."""

    device: torch.device
    chunk: int = 2**62
    compiled: CompiledForward | None = None
    whole_s: float = 0.0  # a compiled launch this short runs whole, not in chunks (_chunk)

    def swap_in(self) -> None:
        """Load the graphs built since the last launch (milliseconds each)."""
        if self.compiled is not None:
            self.compiled.swap_in(self.device)

    def run_job(self, job: Job) -> JobResult:
        """One request on its own (in chunks of at most ``chunk`` samples)."""
        started = time.perf_counter()
        out = drain(_chunks(job, self))
        return _result(job, out, self.device, started, time.perf_counter())

    def run_sliced(self, job: Job, slice_s: float) -> Sliced:
        """One request in slices: an O(N^2) strategy in slices of about ``slice_s`` seconds,
        any other in chunks of at most ``chunk`` samples. Yields the fraction done after each
        slice, so that the caller can stop it (closing the generator frees what it holds) or
        serve other work in between; returns the result."""
        started = time.perf_counter()
        strategy = STRATEGIES[job.strategy] if job.strategy is not None else None
        if strategy is not None and strategy.steps is not None and job.order == 1:
            out = yield from _steps(job, self.device, slice_s)
        else:
            out = yield from _chunks(job, self, sliced=True)
        return _result(job, out, self.device, started, time.perf_counter())

    def run_batch(self, jobs: Sequence[Job]) -> list[JobResult | Exception]:
        """Jobs with one batch_key in one launch; each gets its own result or its own
        error."""
        if len(jobs) > 1:
            started = time.perf_counter()
            try:
                out = _compute(jobs, torch.cat([job.inputs for job in jobs]), self)
            except Exception:
                pass  # isolate the culprit: every request again, on its own, below
            else:
                return _split(jobs, out, self.device, started, time.perf_counter())
        results: list[JobResult | Exception] = []
        for job in jobs:
            try:
                results.append(self.run_job(job))
            except Exception as exc:
                results.append(exc)
        return results


def _split(jobs: Sequence[Job], out: _Output, device: torch.device, started: float,
           finished: float) -> list[JobResult | Exception]:
    """A coalesced launch's output, back to its requests by row counts."""
    finite = out.all_finite()
    # one split per tensor, not one slice per request: every torch call releases and retakes
    # the GIL, which the event loop's thread is waiting for
    sizes = [job.n for job in jobs]
    values = torch.split(out.values, sizes)
    derivs = {name: torch.split(d, sizes) for name, d in out.derivatives.items()}
    results: list[JobResult | Exception] = []
    for i, job in enumerate(jobs):
        try:
            mine = _Output(values[i], {name: d[i] for name, d in derivs.items()}, out.strategy,
                           out.graph)
            results.append(_result(job, mine, device, started, finished, checked=finite))
        except Exception as exc:
            results.append(exc)
    return results
