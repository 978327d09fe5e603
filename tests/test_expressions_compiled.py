"""Callers' expressions through compiled forward mode (app.engine.compiled.builds,
app.engine.compiled.forward): no module holds an expression, so a build process makes it again from
its source (the canonical text and declaration, parsed and checked again there:
``adapter.rebuild``); a large launch runs eagerly while its graph is built and through the graph
after, with the numbers of the closed form (and, for the ODE form, through the loop roller with
``logistic_rk4``'s); a bad graph of an expression is refused by verification as a routine's is."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import Tensor

from app import metrics
from app.engine.compiled import builds
from app.engine.compiled.builds import BuildRefused, ProcessBuilder, Samples, kind_of, locate
from app.engine.compiled.forward import CompiledForward
from app.engine.differentiation.input_sensitivities import with_features_as_params
from app.engine.differentiation.strategies import Problem, forward
from app.engine.runtime.executor import run_strategy
from app.expressions import Expressions, OdeSpec
from routines import discover
from tests.support import GatedBuilder, needs_cxx

F64 = torch.float64
CPU = torch.device("cpu")
EXPRESSIONS = Expressions()
LOGISTIC = "K / (1 + (K - N0) / N0 * exp(-r * t))"
ODE = OdeSpec(rhs="r * n * (1 - n / K)", state="n", initial="N0", time="t", steps=200,
              method="rk4")
NAMES = (["N0", "t"], ["r", "K"])


def closed_form() -> Problem:
    routine = EXPRESSIONS.expression(LOGISTIC, *NAMES).routine
    return problem_of(routine, 300)


def ode_form() -> Problem:
    return problem_of(EXPRESSIONS.ode(ODE, *NAMES).routine, 300)


def problem_of(routine: object, n: int, wrt: tuple[str, ...] = ("r", "K")) -> Problem:
    g = torch.Generator().manual_seed(7)
    x = torch.stack([1 + 90 * torch.rand(n, generator=g, dtype=F64),
                     10 * torch.rand(n, generator=g, dtype=F64)], 1)
    params = {"r": torch.tensor(0.5, dtype=F64), "K": torch.tensor(100.0, dtype=F64)}
    return Problem(routine, x, params, wrt)  # type: ignore[arg-type]


def logistic_by_hand(x: Tensor, r: float, k: float) -> tuple[Tensor, dict[str, Tensor]]:
    """N = K / D, D = 1 + A exp(-r t), A = (K - N0) / N0: values, dN/dr and dN/dK."""
    n0, t = x[:, :1], x[:, 1:]  # (N, 1): one output
    e = torch.exp(-r * t)
    a = (k - n0) / n0
    d = 1 + a * e
    return k / d, {"r": k * a * t * e / d**2, "K": 1 / d - k * e / n0 / d**2}


def assert_same(got: dict[str, Tensor], want: dict[str, Tensor], rel: float = 0.0) -> None:
    assert got.keys() == want.keys()
    for name, w in want.items():
        assert torch.allclose(got[name], w, rtol=rel, atol=0.0), name


# -- without a compiler: what a build process is given, and what a launch does meanwhile -----


def test_a_kind_carries_the_expression_and_a_build_process_makes_it_again() -> None:
    problem = closed_form()
    kind = kind_of(problem)
    assert kind.module == "app.expressions.adapter" and kind.label == "expression"
    assert kind.source == problem.routine.source and LOGISTIC in kind.source
    respelled = EXPRESSIONS.expression("K/(1+(K-N0)/N0*exp(-r*t))", *NAMES).routine
    assert kind_of(problem_of(respelled, 300)) == kind  # one kind, one graph
    made = locate(kind)  # as the build process does: no module holds it
    assert made is not problem.routine and made.name == problem.routine.name
    again = forward(replace(problem, routine=made))
    eager = forward(problem)
    assert torch.equal(again.values, eager.values)
    assert_same(again.derivatives, eager.derivatives)
    with_t = with_features_as_params(problem_of(problem.routine, 5, ("r", "t")))
    assert locate(kind_of(with_t)).param_names == ("K", "r", "t")  # delta: a derived routine


def test_a_source_that_does_not_make_its_routine_is_refused() -> None:
    kind = kind_of(closed_form())
    other = EXPRESSIONS.expression("K * N0 * r * t", *NAMES).routine
    with pytest.raises(BuildRefused, match="its source rebuilt 'expression-") as refused:
        locate(replace(kind, source=other.source or ""))
    assert refused.value.reason == "trace"
    hostile = (other.source or "").replace("K * N0 * r * t", "__import__('os')")
    with pytest.raises(BuildRefused, match=r"could not be rebuilt.*__import__") as refused:
        locate(replace(kind, source=hostile))  # parsed and checked there too: refused
    assert refused.value.reason == "trace"


def test_a_large_expression_launch_runs_eagerly_and_asks_for_its_graph(tmp_path: Path) -> None:
    builder = GatedBuilder(tmp_path)  # its build never finishes here
    compiled = CompiledForward(chunk=1 << 20, min_samples=100, hot_launches=1, builder=builder)
    small = problem_of(closed_form().routine, 10)
    for _ in range(3):  # never hot: a count per caller's text would grow without bound
        assert not compiled.applies(small)
    assert builder.kinds == [] and compiled._small == {}
    problem = closed_form()
    got, ran = run_strategy(problem, "forward", compiled)
    eager = forward(problem)
    assert ran == "forward" and torch.equal(got.values, eager.values)
    assert_same(got.derivatives, eager.derivatives)
    assert builder.kinds == [kind_of(problem)]


# -- with a compiler: built in the build process, served, verified ----------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CompiledForward, float]]:
    """Both forms built in a real build process (which has neither routine)."""
    if shutil.which("g++") is None:
        pytest.skip("compiled forward mode needs a C++ compiler")
    graphs = metrics.child(metrics.COMPILED_GRAPHS, "expression")
    before = graphs._value.get()
    compiled = CompiledForward(chunk=1 << 20, min_samples=2, builder=ProcessBuilder(
        tmp_path_factory.mktemp("expressions")))
    for problem in (closed_form(), ode_form()):
        assert compiled.run(problem) is None  # eager meanwhile; the build is asked for
    assert compiled.settle(600)
    assert compiled.catalogue.refusals == {}
    assert compiled.swap_in(CPU) == 2
    yield compiled, graphs._value.get() - before
    compiled.close()


def launched(compiled: CompiledForward, problem: Problem) -> tuple[dict[str, Tensor], int]:
    """The problem's derivatives (values under "values") from a launch, and how many launches
    its graph has served."""
    got, ran = run_strategy(problem, "forward", compiled)
    assert ran == "forward"
    count = compiled._launches.get((kind_of(problem), str(CPU)), 0)
    return {"values": got.values, **got.derivatives}, count


@needs_cxx
def test_the_closed_form_runs_compiled_with_the_closed_forms_numbers(
        built: tuple[CompiledForward, float]) -> None:
    compiled, made = built
    assert made == 2  # dydc_compiled_graphs_total{routine="expression"}
    problem = closed_form()
    got, launches = launched(compiled, problem)
    assert launches >= 1  # through the graph, not eager forward mode
    values, derivatives = logistic_by_hand(problem.inputs, 0.5, 100.0)
    assert_same(got, {"values": values, **derivatives}, rel=1e-12)
    eager = forward(problem)
    assert_same(got, {"values": eager.values, **eager.derivatives}, rel=1e-13)
    respelled = EXPRESSIONS.expression("K/(1+(K-N0)/N0*exp(-r*t))", *NAMES).routine
    assert compiled.compiled(respelled, ("K", "r"), F64)


@needs_cxx
def test_the_ode_form_runs_through_the_loop_roller_with_logistic_rk4s_numbers(
        built: tuple[CompiledForward, float]) -> None:
    compiled, _ = built
    problem = ode_form()
    assert compiled.catalogue.artefacts[kind_of(problem)].rolled is not None  # one step compiled
    got, launches = launched(compiled, problem)
    assert launches >= 1
    rk4 = forward(replace(problem, routine=discover()["logistic_rk4"]))
    assert_same(got, {"values": rk4.values, **rk4.derivatives}, rel=1e-12)


@needs_cxx
def test_the_verifier_refuses_a_bad_graph_of_an_expression(
        built: tuple[CompiledForward, float]) -> None:
    """The built graph with its dN/dr 1e-9 off, checked on the routine made again from its
    source (as the build process checks it before storing it): refused."""
    compiled, _ = built
    problem = closed_form()
    kind = kind_of(problem)
    graph = builds.load(compiled.catalogue.artefacts[kind], compiled.cache_dir, CPU)

    def bad(cols: Tensor, params: dict[str, Tensor]) -> tuple[Tensor, ...]:
        values, dk, dr = graph(cols, params)
        return values, dk, dr * (1 + 1e-9)

    for n in builds.CHECK_SIZES:
        check = Samples.of(problem).problem(locate(kind), kind, n)
        builds.check(graph, check, kind)  # the graph as built passes
        with pytest.raises(BuildRefused, match=r"dy/dr\[:, 0\] differs") as refused:
            builds.check(bad, check, kind)
        assert refused.value.reason == "verification"
