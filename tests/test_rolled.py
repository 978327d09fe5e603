"""Forward mode rolled around a routine's loop (app.engine.compiled.rolled): the loop found in the
traced values, one step compiled and called once per iteration, and the same numbers as eager
forward mode, for logistic_rk4 and for a routine with two carried values.

logistic_rk4 runs here with fewer steps (RK4_STEPS is read when the routine runs), so that
tracing it takes a fraction of a second rather than the 5 s of its 200 steps.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

import routines.population
from app.engine.compiled import builds
from app.engine.compiled import forward as compiled_module
from app.engine.compiled.builds import InlineBuilder
from app.engine.compiled.forward import CompiledForward
from app.engine.compiled.rolled import MIN_COUNT, RolledForward, find_loop
from app.engine.differentiation.differentiate import differentiate
from app.engine.differentiation.strategies import Problem
from app.engine.runtime.executor import run_strategy
from routines import Param, Routine, discover, routine
from tests.support import assert_close, needs_cxx, problem_for

STEPS = 12


@pytest.fixture(scope="module")
def builtins() -> dict[str, Routine]:
    return discover()


@pytest.fixture
def short_rk4(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(routines.population, "RK4_STEPS", STEPS)


@routine(description="x'' = -omega^2 x - gamma x', semi-implicit Euler in 40 steps to t",
         params=[Param("omega", 2.0, "angular frequency"), Param("gamma", 0.3, "damping")],
         inputs=["x0", "v0", "t"], outputs=["x", "v"])
def oscillator_euler(x0: Tensor, v0: Tensor, t: Tensor, *, omega: Tensor,
                     gamma: Tensor) -> tuple[Tensor, Tensor]:
    h, x, v = t / 40, x0, v0
    for _ in range(40):
        v = v - h * (omega * omega * x + gamma * v)
        x = x + h * v
    return x, v


def values_graph(r: Routine, d: int) -> torch.fx.GraphModule:
    params = {p.name: torch.tensor(p.default, dtype=torch.float64) for p in r.params}
    return compiled_module.values_graph(
        Problem(r, torch.empty(1, d, dtype=torch.float64), params, r.param_names))


def test_the_rk4_steps_are_found(builtins: dict[str, Routine], short_rk4: None) -> None:
    graph = values_graph(builtins["logistic_rk4"], 2).graph
    loop = find_loop(graph)
    assert loop is not None and loop.count == STEPS
    calls = [n for n in graph.nodes if n.op == "call_function"]
    assert loop.count * loop.period >= 0.9 * len(calls)  # all but the set-up and the result


def test_closed_forms_have_no_loop_and_short_loops_stay_unrolled(
        builtins: dict[str, Routine], monkeypatch: pytest.MonkeyPatch) -> None:
    for name, r in builtins.items():
        if name != "logistic_rk4":
            assert find_loop(values_graph(r, len(r.inputs)).graph) is None, name
    monkeypatch.setattr(routines.population, "RK4_STEPS", MIN_COUNT - 1)
    assert find_loop(values_graph(builtins["logistic_rk4"], 2).graph) is None


def rolled(problem: Problem) -> RolledForward:
    graph = compiled_module.values_graph(problem)
    loop = find_loop(graph.graph)
    assert loop is not None
    return RolledForward(graph, loop, tuple(problem.params), problem.wrt)


def assert_same_as_eager(problem: Problem, rtol: float = 1e-12) -> None:
    forward = rolled(problem)
    got = forward(torch.stack(problem.inputs.unbind(1)), problem.params)
    eager, _ = differentiate(problem, "forward")
    assert_close(got[0], eager.values, rtol=rtol)
    for name, tangent in zip(problem.wrt, got[1:], strict=True):
        assert_close(tangent, eager.derivatives[name], rtol=rtol, atol=1e-300)


@needs_cxx
def test_rk4_rolled_gives_eager_forward_modes_numbers(
        builtins: dict[str, Routine], short_rk4: None) -> None:
    assert_same_as_eager(problem_for(builtins["logistic_rk4"], 50, wrt=("r", "K")))


@needs_cxx
def test_per_sample_parameters_a_parameter_left_out_and_float32(
        builtins: dict[str, Routine], short_rk4: None) -> None:
    """r per sample and not differentiated, K shared: the step carries a per-sample value
    with no tangent."""
    r = builtins["logistic_rk4"]
    x = problem_for(r, 40).inputs
    per_sample = {"r": torch.linspace(0.1, 1.0, 40, dtype=torch.float64),
                  "K": torch.tensor(100.0, dtype=torch.float64)}
    assert_same_as_eager(Problem(r, x, per_sample, ("K",)))
    assert_same_as_eager(problem_for(r, 40, dtype=torch.float32), rtol=1e-5)


@needs_cxx
def test_two_carried_values_and_two_outputs() -> None:
    r = oscillator_euler
    g = torch.Generator().manual_seed(1)
    x = torch.rand(30, 3, generator=g, dtype=torch.float64) + 0.5
    params = {"omega": torch.tensor(2.0, dtype=torch.float64),
              "gamma": torch.tensor(0.3, dtype=torch.float64)}
    forward = rolled(Problem(r, x, params, ("omega", "gamma")))
    assert len(forward.step.carried) == 2 and forward.loop.count == 40
    assert_same_as_eager(Problem(r, x, params, ("omega", "gamma")))


@routine(description="y = a y + x / (i + 2), 60 times: a different constant every step",
         params=[Param("a", 0.5, "weight")], inputs=["x"])
def series(x: Tensor, *, a: Tensor) -> Tensor:
    y = x
    for i in range(60):
        y = y * a + x / (i + 2)
    return y


def test_a_long_graph_with_no_loop_to_roll_stays_eager(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    """Steps that differ (here by a constant) are not a loop; a graph that long is then not
    compiled whole either (MAX_OPERATIONS), since compiling it could take minutes."""
    assert find_loop(values_graph(series, 1).graph) is None
    monkeypatch.setattr(builds, "MAX_OPERATIONS", 100)
    compiled = CompiledForward(chunk=1 << 20, min_samples=2, builder=InlineBuilder(tmp_path))
    x = torch.linspace(0.5, 2.0, 20, dtype=torch.float64)[:, None]
    problem = Problem(series, x, {"a": torch.tensor(0.5, dtype=torch.float64)}, ("a",))
    assert compiled.run(problem) is None  # the build is refused at once
    assert compiled.refused(problem) == "operations" and not compiled.applies(problem)
    result, ran = run_strategy(problem, "auto", compiled)
    assert ran == "forward" and compiled.graphs == 0
    a, dy = 0.5, torch.zeros_like(x)  # d/da of the recurrence, step by step
    y = x.clone()
    for i in range(60):
        dy = dy * a + y
        y = y * a + x / (i + 2)
    assert_close(result.values, y, rtol=1e-12)
    assert_close(result.derivatives["a"], dy, rtol=1e-12)


@routine(description="a rotation applied 30 times to (x, x): two carried values that start "
         "from the same one", params=[Param("h", 0.1, "angle")], inputs=["x"])
def rotations(x: Tensor, *, h: Tensor) -> Tensor:
    a, b = x, x
    for _ in range(30):
        a, b = a + h * b, b - h * a
    return a * b


@needs_cxx
def test_carried_values_that_start_from_the_same_value() -> None:
    x = torch.linspace(0.5, 2.0, 25, dtype=torch.float64)[:, None]
    problem = Problem(rotations, x, {"h": torch.tensor(0.1, dtype=torch.float64)}, ("h",))
    assert len(rolled(problem).step.carried) == 2
    assert_same_as_eager(problem)




@routine(description="y = a y + x / d, 10 times: a division by a shared parameter every step",
         params=[Param("a", 0.5, "weight"), Param("d", 2.0, "divisor")], inputs=["x"])
def damped(x: Tensor, *, a: Tensor, d: Tensor) -> Tensor:
    y = x
    for _ in range(10):
        y = a * y + x / d
    return y


def divided_by(problem: Problem) -> list[str]:
    """The parameters the compiled step multiplies by the reciprocal of."""
    graph = compiled_module.values_graph(problem)
    loop = find_loop(graph.graph)
    assert loop is not None
    forward = RolledForward(graph, loop, tuple(problem.params), problem.wrt)
    forward(torch.stack(problem.inputs.unbind(1)), problem.params)
    names = dict(zip([n for n in graph.graph.nodes if n.op == "placeholder"][1:],
                     problem.params, strict=True))
    return [names[forward.step.invariants[i]] for i in forward.divisors]


@needs_cxx
def test_divisions_by_a_shared_parameter_are_by_its_reciprocal(
        builtins: dict[str, Routine], short_rk4: None) -> None:
    """logistic_rk4's n / K is n * (1 / K) in the compiled step, within 1e-12 of eager."""
    problem = problem_for(builtins["logistic_rk4"], 50, wrt=("r", "K"))
    assert divided_by(problem) == ["K"]
    assert_same_as_eager(problem)


@needs_cxx
@pytest.mark.parametrize("d", [3.0, 1e-310, -1e-310, 0.0, float("inf")])
def test_a_divisor_whose_reciprocal_is_not_normal_runs_eagerly(d: float) -> None:
    """1 / 1e-310 is inf, where x / 1e-310 is finite: x * (1 / d) would not be x / d, so such
    a launch takes its steps in eager forward mode; the same numbers as eager for every d."""
    x = torch.tensor([[1e-300], [3e-301], [-2e-300], [0.0], [1e-305]], dtype=torch.float64)
    params = {k: torch.tensor(v, dtype=torch.float64) for k, v in (("a", 0.5), ("d", d))}
    problem = Problem(damped, x, params, ("a",))  # dy/dd = -x / d**2 overflows at 1e-310
    assert divided_by(problem) == ["d"]
    got = rolled(problem)(torch.stack(problem.inputs.unbind(1)), problem.params)
    eager, _ = differentiate(problem, "forward")
    assert bool(torch.isfinite(eager.values[:3]).all()) is (d != 0)
    for mine, theirs in zip(got, (eager.values, *eager.derivatives.values()), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-300, equal_nan=True)
