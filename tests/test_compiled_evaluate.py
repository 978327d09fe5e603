"""Plain evaluation through compiled graphs (app.engine.compiled, a kind with no wrt): a large
evaluate launch runs through its routine's values graph once built, with eager evaluation's
numbers (and the closed form's), per-sample parameters included; a wrong values graph is
refused by the check before it serves; a loop is rolled with no tangents; small evaluate
launches never make a kind hot (a loaded graph serves them); an evaluate job is priced at
its graph's measured rate.

One graph is built (Black-Scholes, per-sample parameters, AOTInductor) and shared."""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

import routines.population
from app.engine.compiled import builds, forward
from app.engine.compiled.builds import BuildRefused, InlineBuilder, Samples, kind_of
from app.engine.compiled.forward import CompiledForward
from app.engine.compiled.rolled import RolledForward, find_loop
from app.engine.compiled.threads import GRAIN
from app.engine.differentiation.strategies import Problem
from app.engine.errors import CostExceeded
from app.engine.runtime.admission import CostModel, RoutineCost
from app.engine.runtime.executor import Executor
from app.engine.runtime.jobs import Job, JobKind
from app.engine.runtime.pricing import Pricing
from app.engine.runtime.validation import Limits
from routines import Routine, discover
from tests.support import assert_close, black_scholes, needs_cxx, options

CPU = torch.device("cpu")
F64 = torch.float64
ROUTINES = discover()
BS = ROUTINES["black_scholes_call"]
MIN = 64  # min_samples here: launches of 64 samples or more are large


def evaluate_job(n: int, per_sample: bool, seed: int = 1) -> Job:
    x = torch.from_numpy(options(n, seed))
    params: dict[str, float | np.ndarray] = {"sigma": 0.25, "r": 0.03}
    if per_sample:
        params = {"sigma": np.linspace(0.1, 0.5, n), "r": np.linspace(-0.01, 0.06, n)}
    return Job(kind=JobKind.EVALUATE, routine=BS, inputs=x, params=params, wrt=(),
               strategy=None, dtype=F64)


def problem_of(job: Job) -> Problem:
    return Problem(job.routine, job.inputs, {k: torch.as_tensor(v, dtype=F64)
                                             for k, v in job.params.items()}, ())


def closed_form(job: Job) -> Tensor:
    x = job.inputs.numpy()
    price = black_scholes(x[:, 0], x[:, 1], x[:, 2], job.params["sigma"],
                          job.params["r"])["price"]
    return torch.from_numpy(price).reshape(-1, 1)


class Counting:
    """Counts the samples that eager evaluation (Problem.evaluate) is asked for."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sizes: list[int] = []
        real = Problem.evaluate

        def evaluate(problem: Problem, params: dict[str, Tensor] | None = None) -> Tensor:
            self.sizes.append(problem.n)
            return real(problem, params)

        monkeypatch.setattr(Problem, "evaluate", evaluate)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CompiledForward]:
    """Black-Scholes' values graph (per-sample parameters), asked for by a large evaluate
    launch, built inline and swapped in."""
    if shutil.which("g++") is None:
        pytest.skip("compiled graphs need a C++ compiler")
    compiled = CompiledForward(chunk=1000, min_samples=MIN,
                               builder=InlineBuilder(tmp_path_factory.mktemp("values")))
    ex = Executor(CPU, compiled=compiled)
    job = evaluate_job(300, per_sample=True)
    first = ex.run_job(job)  # eager, and the build is asked for (inline here)
    assert_close(first.values, closed_form(job), rtol=1e-12, atol=1e-12)
    assert compiled.catalogue.refusals == {}
    assert compiled.swap_in(CPU) == 1
    yield compiled
    compiled.close()


@needs_cxx
@pytest.mark.parametrize("per_sample", [True, False])
def test_a_large_evaluate_launch_runs_through_the_values_graph(
        built: CompiledForward, per_sample: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    job = evaluate_job(2500, per_sample, seed=2)  # three calls of the graph (chunk 1000)
    want = problem_of(job).evaluate()
    eager = Counting(monkeypatch)
    result = Executor(CPU, compiled=built).run_job(job)
    assert max(eager.sizes, default=0) <= 4  # a re-check's rows at most, never the launch
    assert result.strategy is None and result.derivatives == {}
    assert_close(result.values, want, rtol=1e-12)
    assert_close(result.values, closed_form(job), rtol=1e-12, atol=1e-12)


@needs_cxx
def test_small_evaluate_launches_never_turn_a_kind_hot_but_use_a_loaded_graph(
        built: CompiledForward, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A small launch's eager evaluation costs about 3x a graph's call (0.36 against 0.11 ms
    for 16 samples of Black-Scholes), where eager forward mode costs 10x: a quarter of a
    millisecond is not worth a build (tens of seconds of CPU) and a graph slot per kind, so
    only a large launch asks for plain evaluation's graph; once it is loaded, small launches
    use it too."""
    job = evaluate_job(MIN - 1, per_sample=True)
    small = problem_of(job)
    hot = CompiledForward(chunk=1000, min_samples=MIN, hot_launches=2,
                          builder=InlineBuilder(tmp_path))
    asked: list[builds.Kind] = []
    monkeypatch.setattr(hot.catalogue, "request", lambda kind, problem: asked.append(kind))
    for _ in range(5):
        assert not hot.applies(small)
    assert asked == []
    sensitivities = Problem(BS, small.inputs, small.params, ("sigma",))
    assert not hot.applies(sensitivities) and hot.applies(sensitivities)  # the rule for those
    eager = Counting(monkeypatch)
    result = Executor(CPU, compiled=built).run_job(job)  # its graph is loaded: through it
    assert max(eager.sizes, default=0) <= 4
    assert_close(result.values, closed_form(job), rtol=1e-12, atol=1e-12)


@needs_cxx
def test_an_evaluate_job_is_priced_at_its_graphs_measured_rate(built: CompiledForward) -> None:
    costs = CostModel(max_job_cost_s=1.0)
    costs._routines[BS.name] = RoutineCost(pass_s=0.0, sample_s=1e-3)  # eagerly: 1 ms a sample
    pricing = Pricing(costs, Limits(max_samples=10**9, caps={}, max_job_cost_s=1.0), built,
                      [CPU])
    Executor(CPU, compiled=built).run_job(evaluate_job(2000, per_sample=True))  # measured
    job = evaluate_job(5000, per_sample=True)
    rate = built.launch_seconds(problem_of(job), CPU)
    assert rate is not None and 0 < rate < 1.0
    assert pricing.price(job) == pytest.approx(rate)  # not 5 s, eager evaluation's estimate
    without = Pricing(costs, pricing.limits, None, [CPU])
    with pytest.raises(CostExceeded, match="evaluation of routine black_scholes_call"):
        without.price(job)


def test_a_wrong_values_graph_is_refused_by_the_check(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The packaged graph (no C++ here: the traced graph itself stands for the package) is
    1e-9 relative off in its values: the check before serving refuses it, and stores
    nothing."""
    kept: dict[str, torch.fx.GraphModule] = {}
    monkeypatch.setattr(builds, "_package", lambda gm, args, path: kept.setdefault("gm", gm))

    def wrong(path: Path, device_index: int) -> object:
        return lambda cols, params: (kept["gm"](cols, params)[0] * (1 + 1e-8),)

    monkeypatch.setattr(builds, "_load_package", wrong)
    p = problem_of(evaluate_job(200, per_sample=True))
    with pytest.raises(BuildRefused, match=r"values\[:, 0\] differs") as refused:
        builds.build(kind_of(p), Samples.of(p), tmp_path, BS)
    assert refused.value.reason == "verification"
    assert not [f for f in tmp_path.iterdir() if f.is_file()]
    # the same graph, right, is kept: what refused it was the check, not the stand-in
    monkeypatch.setattr(builds, "_load_package",
                        lambda path, device_index: lambda cols, params: kept["gm"](cols, params))
    artefact = builds.build(kind_of(p), Samples.of(p), tmp_path, BS)
    assert artefact.kind.wrt == () and artefact.kind.outputs == ()


def test_a_loop_is_rolled_with_no_tangents(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain evaluation of logistic_rk4 (its RK4 steps rolled into one step): the values
    alone, equal to eager evaluation's."""
    monkeypatch.setattr(routines.population, "RK4_STEPS", 12)
    r: Routine = ROUTINES["logistic_rk4"]
    n = 40
    x = torch.stack([torch.linspace(1.0, 30.0, n, dtype=F64),
                     torch.linspace(0.0, 3.0, n, dtype=F64)], 1)
    params = {"r": torch.linspace(0.2, 0.9, n, dtype=F64), "K": torch.tensor(50.0, dtype=F64)}
    p = Problem(r, x, params, ())
    graph = builds.values_graph(p)
    loop = find_loop(graph.graph)
    assert loop is not None and loop.count == 12
    rolled = RolledForward(graph, loop, tuple(params), (),
                           lambda gm, args: lambda *flat: tuple(gm(*flat)))
    got = rolled(*builds.columns(p, slice(None)))
    assert len(got) == 1
    assert_close(got[0], p.evaluate(), rtol=1e-14)
    assert math.isfinite(float(got[0].sum()))


@needs_cxx
def test_a_request_a_graph_runs_within_a_slice_runs_whole_not_in_chunks(
        built: CompiledForward, monkeypatch: pytest.MonkeyPatch) -> None:
    """Executor.whole_s: once its graph's rate is measured, a job larger than the executor's
    chunk runs as one launch when the graph takes it within whole_s; in chunks otherwise
    (whole_s 0, or a rate that would take longer)."""
    Executor(CPU, compiled=built).run_job(evaluate_job(2000, per_sample=True))  # measured
    sizes: list[int] = []
    real = built.run

    def counting(problem: Problem, order: int = 1, cross: bool = False) -> object:
        sizes.append(problem.n)
        return real(problem, order, cross)

    monkeypatch.setattr(built, "run", counting)
    job = evaluate_job(2500, per_sample=True, seed=3)
    for whole_s, launches in ((10.0, [2500]), (0.0, [500] * 5), (1e-12, [500] * 5)):
        sizes.clear()
        result = Executor(CPU, chunk=500, compiled=built, whole_s=whole_s).run_job(job)
        assert sizes == launches, whole_s
        assert_close(result.values, closed_form(job), rtol=1e-12, atol=1e-12)


@needs_cxx
def test_a_small_launch_calls_its_graph_serial_and_a_large_one_in_parallel(
        built: CompiledForward, monkeypatch: pytest.MonkeyPatch) -> None:
    """The OpenMP threads the graph's call finds (app.engine.compiled.threads): one below
    GRAIN samples, where a parallel region would cost more than it saves, the thread's own
    count from it; and the count back after each launch."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen: list[int] = []
        real = forward.columns

        def recording(problem: Problem, rows: slice) -> object:
            seen.append(torch.get_num_threads())
            return real(problem, rows)

        monkeypatch.setattr(forward, "columns", recording)
        ex = Executor(CPU, chunk=1 << 20, compiled=built)
        for n in (300, GRAIN):
            job = evaluate_job(n, per_sample=True, seed=4)
            assert_close(ex.run_job(job).values, closed_form(job), rtol=1e-12, atol=1e-12)
        assert seen[0] == 1 and seen[1:] == [2] * math.ceil(GRAIN / 1000)  # (chunks of 1,000)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
