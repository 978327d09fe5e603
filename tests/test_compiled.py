"""Forward mode through torch.compile (app.engine.compiled): the same numbers as the closed
forms, with shared and per-sample parameters, one graph for every batch size, in several calls
for large launches; and eager forward mode wherever compiling does not apply or fails.

Sizes here are small (compiling costs the same whatever the size), and so is the most one
call takes, so that launches of several calls are exercised at small N.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time

import pytest
import torch
from test_routines import AD_RTOL, CLOSED_FORMS, assert_close
from test_strategies import assert_matches_closed_form, problem_for
from torch._dynamo.utils import counters

from app.engine import cache_host_allocations, warm_up
from app.engine import compiled as compiled_module
from app.engine.compiled import TRACE_N, CompiledForward
from app.engine.compute import AUTO_FALLBACK, TRANSFORMS_LOCK, differentiate
from app.engine.strategies import Problem
from routines import Routine, discover
from tests.support import needs_cxx
from tests.test_operations import scrape, value

CHUNK = 64


@pytest.fixture(scope="module")
def builtins() -> dict[str, Routine]:
    return discover()


@pytest.fixture(scope="module")
def compiled() -> CompiledForward:
    return CompiledForward(chunk=CHUNK, min_samples=32)


@needs_cxx
def test_shared_parameters_in_several_calls_with_a_short_last_one(
        builtins: dict[str, Routine], compiled: CompiledForward) -> None:
    problem = problem_for(builtins["black_scholes_call"], 2 * CHUNK + 37, wrt=("sigma", "r"))
    assert compiled.applies(problem)
    result = compiled.run(problem)
    assert result is not None
    assert_matches_closed_form(problem, result.values, result.derivatives, "forward")
    eager, ran = differentiate(problem, "forward")
    assert ran == "forward"
    for name in problem.wrt:  # the same numbers as eager forward mode, to rounding
        assert_close(result.derivatives[name], eager.derivatives[name], rtol=1e-12)
    assert differentiate(problem, "auto", compiled)[1] == "forward"


@needs_cxx
def test_one_graph_serves_every_batch_size(builtins: dict[str, Routine]) -> None:
    compiled = CompiledForward(chunk=CHUNK, min_samples=2)
    r = builtins["logistic_growth"]
    assert compiled.run(problem_for(r, 40)) is not None  # compiles
    graphs = counters["stats"]["unique_graphs"]
    for n in (2, 41, CHUNK, 3 * CHUNK + 5):
        problem = problem_for(r, n)
        result = compiled.run(problem)
        assert result is not None and result.values.shape == (n, 1)
        assert_matches_closed_form(problem, result.values, result.derivatives, "forward")
    assert counters["stats"]["unique_graphs"] == graphs  # no recompile for a new N
    assert compiled.graphs == 1


@needs_cxx
def test_a_remainder_of_one_sample_joins_the_call_before(
        builtins: dict[str, Routine], compiled: CompiledForward,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A call of one sample would compile a graph of its own (torch.compile specialises the
    sizes 0 and 1)."""
    r = builtins["damped_oscillator"]
    problem = problem_for(r, 2 * CHUNK + 1)
    assert compiled.run(problem_for(r, CHUNK)) is not None
    sizes: list[int] = []
    graph = compiled._graphs[compiled_module._key(problem)]
    monkeypatch.setitem(compiled._graphs, compiled_module._key(problem),
                        lambda cols, params: (sizes.append(cols.shape[1]), graph(cols, params))[1])
    result = compiled.run(problem)
    assert sizes == [CHUNK, CHUNK + 1]
    assert result is not None
    assert_matches_closed_form(problem, result.values, result.derivatives, "forward")


def test_the_traced_graph_takes_any_batch_size(builtins: dict[str, Routine]) -> None:
    """Traced at TRACE_N samples, with that size then replaced by the inputs' own: none of it
    is left in the graph, which runs as it is (not compiled) at another N with eager forward
    mode's numbers; here with three outputs a sample and a per-sample parameter."""
    r = builtins["softmax"]
    n = 50
    x = problem_for(r, n).inputs
    problem = Problem(r, x, {"T": torch.linspace(0.5, 2.0, n, dtype=torch.float64)}, ("T",))
    gm = compiled_module._trace(problem)

    def sizes(arg: object) -> list[int]:
        if isinstance(arg, (list, tuple)):
            return [v for a in arg for v in sizes(a)]
        return [arg] if type(arg) is int else []

    for node in gm.graph.nodes:
        args = sizes(node.args) + sizes(list(node.kwargs.values()))
        assert not [a for a in args if a and a % TRACE_N == 0], node.format_node()
    values, tangent = gm(x.t().contiguous(), problem.params)
    eager, _ = differentiate(problem, "forward")
    assert_close(values, eager.values, rtol=1e-14)
    assert_close(tangent, eager.derivatives["T"], rtol=1e-14)


@needs_cxx
def test_a_graph_that_disagrees_with_eager_forward_mode_is_refused(
        builtins: dict[str, Routine], monkeypatch: pytest.MonkeyPatch) -> None:
    compiled = CompiledForward(chunk=CHUNK, min_samples=2)
    trace = compiled_module._trace
    monkeypatch.setattr(compiled_module, "_trace", lambda p: (
        lambda cols, params: tuple(t * 1.001 for t in trace(p)(cols, params))))
    problem = problem_for(builtins["exponential_decay"], 40)
    assert compiled.run(problem) is None
    assert not compiled.applies(problem) and compiled.graphs == 0
    result, ran = differentiate(problem, "auto", compiled)  # eager, and right
    assert ran == "forward"
    assert_matches_closed_form(problem, result.values, result.derivatives, ran)


@needs_cxx
def test_per_sample_parameters_as_a_coalesced_batch_has_them(
        builtins: dict[str, Routine], compiled: CompiledForward) -> None:
    r = builtins["exponential_decay"]
    form = CLOSED_FORMS[r.name]
    n = CHUNK + 5
    x = form.batch(n, seed=3)
    k = torch.linspace(0.1, 2.0, n, dtype=torch.float64)
    result = compiled.run(Problem(r, x, {"k": k}, ("k",)))
    assert result is not None
    for i in (0, CHUNK - 1, CHUNK, n - 1):  # each sample with its own k, across the chunks
        values, derivs = form.expected(x[i:i + 1], {"k": float(k[i])})
        assert_close(result.values[i:i + 1], values, rtol=AD_RTOL)
        assert_close(result.derivatives["k"][i:i + 1], derivs["k"], rtol=AD_RTOL)


@needs_cxx
def test_several_outputs_and_float32(builtins: dict[str, Routine],
                                     compiled: CompiledForward) -> None:
    r = builtins["softmax"]
    problem = problem_for(r, CHUNK + 1, dtype=torch.float32)
    result = compiled.run(problem)
    assert result is not None
    assert result.values.shape == (CHUNK + 1, len(r.outputs))
    assert result.values.dtype == torch.float32
    exact_values, exact = CLOSED_FORMS[r.name].expected(problem.inputs)
    assert_close(result.values, exact_values, rtol=1e-5, atol=1e-6)
    assert_close(result.derivatives["T"], exact["T"], rtol=1e-4, atol=1e-5)


def test_small_launches_and_opted_out_routines_run_eagerly(
        builtins: dict[str, Routine], compiled: CompiledForward) -> None:
    assert not compiled.applies(problem_for(builtins["linear"], 31))
    assert compiled.applies(problem_for(builtins["linear"], 32))
    opted_out = dataclasses.replace(builtins["linear"], compile=False)
    assert not compiled.applies(problem_for(opted_out, 1000))


def test_what_cannot_compile_falls_back_and_is_not_tried_again(
        builtins: dict[str, Routine], compiled: CompiledForward) -> None:
    r = builtins["gamma_survival"]  # igammac has no forward-mode formula
    problem = problem_for(r, 40)
    assert compiled.applies(problem)
    result, ran = differentiate(problem, "auto", compiled)
    assert ran == AUTO_FALLBACK
    assert not compiled.applies(problem)  # refused for good: no second attempt
    assert_matches_closed_form(problem, result.values, result.derivatives, ran)
    with pytest.raises(NotImplementedError, match="forward AD"):
        differentiate(problem, "forward", compiled)


@needs_cxx
@pytest.mark.anyio
async def test_the_service_compiles_large_launches(make_client) -> None:  # type: ignore[no-untyped-def]
    form = CLOSED_FORMS["linear"]
    x = form.batch(100, seed=5)
    async with make_client(compile_min_samples=50, compile_chunk=32) as c:
        before = scrape((await c.get("/metrics")).text)
        resp = await c.post("/v1/routines/linear/sensitivities",
                            json={"inputs": x[:, 0].tolist(), "params": {"C": 1.5}})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["strategy"] == "forward"
        assert body["derivatives"]["C"] == x[:, 0].tolist()
        assert body["values"] == pytest.approx((1.5 * x[:, 0]).tolist(), rel=1e-15)
        after = scrape((await c.get("/metrics")).text)
        name = "dydc_compiled_graphs_total"
        assert value(after, name, routine="linear") - value(before, name, routine="linear") == 1


@pytest.mark.anyio
async def test_compiling_can_be_switched_off(make_client) -> None:  # type: ignore[no-untyped-def]
    async with make_client(compile=False, compile_min_samples=1) as c:
        before = scrape((await c.get("/metrics")).text)
        resp = await c.post("/v1/routines/linear/sensitivities",
                            json={"inputs": [1.0, 2.0], "params": {"C": 1.5}})
        assert resp.json()["derivatives"]["C"] == [1.0, 2.0]
        after = scrape((await c.get("/metrics")).text)
        name = "dydc_compiled_graphs_total"
        assert value(after, name) == value(before, name)



@needs_cxx
def test_warm_up_compiles_forward_mode_for_one_large_request(
        builtins: dict[str, Routine]) -> None:
    compiled = CompiledForward(chunk=CHUNK, min_samples=CHUNK)
    opted_out = dataclasses.replace(builtins["linear"], compile=False)
    routines = {"exponential_decay": builtins["exponential_decay"], "linear": opted_out}
    warm_up(routines, torch.device("cpu"), compiled)
    exp = builtins["exponential_decay"]
    assert compiled.compiled(exp, ("k",), torch.float64)  # all parameters, float64, shared
    assert not compiled.compiled(opted_out, ("C",), torch.float64)
    # a real request of that kind then runs compiled, with no new graph
    problem = problem_for(exp, 3 * CHUNK + 1)
    before = compiled.graphs
    result, ran = differentiate(problem, "auto", compiled)
    assert ran == "forward" and compiled.graphs == before
    assert_matches_closed_form(problem, result.values, result.derivatives, ran)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_host_allocations_are_cached_on_linux() -> None:
    assert cache_host_allocations()
    x = torch.ones(2_000_000, dtype=torch.float64)  # over glibc's default mmap threshold
    assert float((x * 2).sum()) == 4_000_000.0


def test_warm_up_waits_for_launches_in_flight(builtins: dict[str, Routine]) -> None:
    """Forward-AD levels are process-wide: a worker warming up (after a restart, say) must not
    run jvp beside another worker's launch, so it takes the same lock as launches."""
    routines, cpu = {"linear": builtins["linear"]}, torch.device("cpu")
    warm_up(routines, cpu)  # the first jvp's one-off costs out of the way
    started = time.perf_counter()
    warm_up(routines, cpu)
    unhindered = time.perf_counter() - started
    done = threading.Event()
    thread = threading.Thread(target=lambda: (warm_up(routines, cpu), done.set()))
    with TRANSFORMS_LOCK:  # a launch in flight on another worker
        thread.start()
        assert not done.wait(max(1.0, 10 * unhindered))
    assert done.wait(30)
    thread.join()
