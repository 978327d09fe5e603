"""Compiled forward mode on the serving side (app.engine.compiled.forward): a launch never waits for
a build, graphs are swapped in between launches, one graph per canonical kind, the same numbers
as the closed forms in several calls, live re-checks that retire a wrong graph, the bound on
graphs, and the service's path from a first eager answer to a compiled one.

Builds cost seconds (AOTInductor compiles C++), so the module builds two graphs once, in the
build process as the service does, and the tests share them; a test that must not disturb
them copies their files into its own cache directory.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from app.engine import warm_up
from app.engine.compiled import builds
from app.engine.compiled import catalogue as catalogue_module
from app.engine.compiled.builds import Artefact, Graph, InlineBuilder, forward_graph, kind_of
from app.engine.compiled.forward import TRACE_N, CompiledForward
from app.engine.compiled.pacing import Pacer
from app.engine.differentiation.differentiate import TRANSFORMS_LOCK, differentiate
from app.engine.differentiation.strategies import Problem
from app.engine.runtime.executor import Executor, run_strategy
from routines import Routine, discover
from tests.support import (
    AD_RTOL,
    CLOSED_FORMS,
    ROOT,
    GatedBuilder,
    assert_close,
    assert_matches_closed_form,
    needs_cxx,
    problem_for,
    scrape,
    value,
)

CHUNK = 64
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def builtins() -> dict[str, Routine]:
    return discover()


def black_scholes(builtins: dict[str, Routine], n: int,
                  wrt: tuple[str, ...] = ("sigma", "r")) -> Problem:
    return problem_for(builtins["black_scholes_call"], n, wrt=wrt)


def decay_per_sample(builtins: dict[str, Routine], n: int, scale: float = 1.0) -> Problem:
    r = builtins["exponential_decay"]
    x = CLOSED_FORMS[r.name].batch(n, seed=3)
    x[:, 0] *= scale
    return Problem(r, x, {"k": torch.linspace(0.1, 2.0, n, dtype=torch.float64)}, ("k",))


@pytest.fixture(scope="module")
def built(builtins: dict[str, Routine],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[CompiledForward]:
    """Black-Scholes (wrt sigma, r; shared) and exponential decay (per-sample k), built by the
    build process and swapped in."""
    if shutil.which("g++") is None:
        pytest.skip("compiled forward mode needs a C++ compiler")
    compiled = CompiledForward(chunk=CHUNK, min_samples=32,
                               cache_dir=tmp_path_factory.mktemp("compiled"))
    for problem in (black_scholes(builtins, 100), decay_per_sample(builtins, 100)):
        assert compiled.run(problem) is None  # not built yet: eager, and a build is asked for
    assert compiled.settle(600)
    assert compiled.swap_in(CPU) == 2, dict(compiled.catalogue.refusals)
    yield compiled
    compiled.close()


def copy_of(built: CompiledForward, directory: Path, **options: Any) -> CompiledForward:
    """A CompiledForward over a copy of the module's built files (found there, not built)."""
    for f in built.cache_dir.iterdir():
        if f.is_file():
            shutil.copy(f, directory / f.name)
    return CompiledForward(chunk=CHUNK, min_samples=32, builder=InlineBuilder(directory),
                           **options)


@needs_cxx
def test_shared_parameters_in_several_calls_with_a_short_last_one(
        builtins: dict[str, Routine], built: CompiledForward) -> None:
    problem = black_scholes(builtins, 2 * CHUNK + 37)
    result = built.run(problem)
    assert result is not None
    assert_matches_closed_form(problem, result.values, result.derivatives, "forward")
    eager, _ = differentiate(problem, "forward")
    for name in problem.wrt:  # the same numbers as eager forward mode, to rounding
        assert_close(result.derivatives[name], eager.derivatives[name], rtol=1e-12)


@needs_cxx
def test_wrt_in_either_order_is_one_graph(builtins: dict[str, Routine],
                                          built: CompiledForward) -> None:
    graphs = dict(built.catalogue.loaded)
    one, other = black_scholes(builtins, 90, ("sigma", "r")), black_scholes(builtins, 90,
                                                                            ("r", "sigma"))
    assert kind_of(one) == kind_of(other)
    a, b = built.run(one), built.run(other)
    assert a is not None and b is not None
    assert list(b.derivatives) == ["r", "sigma"]  # the request's order, the graph's numbers
    for name in ("sigma", "r"):
        assert torch.equal(a.derivatives[name], b.derivatives[name])
    # nothing new built or asked for
    assert built.catalogue.loaded == graphs and not built.catalogue.pending


@needs_cxx
def test_a_remainder_of_one_sample_joins_the_call_before(
        builtins: dict[str, Routine], built: CompiledForward,
        monkeypatch: pytest.MonkeyPatch) -> None:
    problem = black_scholes(builtins, 2 * CHUNK + 1)
    key = (kind_of(problem), "cpu")
    graph, sizes = built.catalogue.loaded[key], []
    monkeypatch.setitem(built.catalogue._graphs, key,
                        lambda cols, params: (sizes.append(cols.shape[1]), graph(cols, params))[1])
    result = built.run(problem)
    assert sizes == [CHUNK, CHUNK + 1]
    assert result is not None
    assert_matches_closed_form(problem, result.values, result.derivatives, "forward")


@needs_cxx
def test_per_sample_parameters_and_shared_ones_share_the_per_sample_graph(
        builtins: dict[str, Routine], built: CompiledForward) -> None:
    r, form = builtins["exponential_decay"], CLOSED_FORMS["exponential_decay"]
    n = CHUNK + 5
    problem = decay_per_sample(builtins, n)
    result = built.run(problem)
    assert result is not None
    for i in (0, CHUNK - 1, CHUNK, n - 1):  # each sample with its own k, across the calls
        values, derivs = form.expected(problem.inputs[i:i + 1],
                                       {"k": float(problem.params["k"][i])})
        assert_close(result.values[i:i + 1], values, rtol=AD_RTOL)
        assert_close(result.derivatives["k"][i:i + 1], derivs["k"], rtol=AD_RTOL)
    shared = Problem(r, problem.inputs, {"k": torch.tensor(0.7, dtype=torch.float64)}, ("k",))
    result = built.run(shared)  # no shared graph: the per-sample one, k expanded
    assert result is not None and not built.catalogue.pending
    values, derivs = form.expected(shared.inputs, {"k": 0.7})
    assert_close(result.values, values, rtol=AD_RTOL)
    assert_close(result.derivatives["k"], derivs["k"], rtol=AD_RTOL)


@needs_cxx
def test_a_launch_never_waits_for_a_build(builtins: dict[str, Routine], built: CompiledForward,
                                         tmp_path: Path) -> None:
    events: list[str] = []
    artefact = next(a for k, a in built.catalogue.artefacts.items()
                    if k.routine == "black_scholes_call")
    shutil.copy(built.cache_dir / artefact.package, tmp_path / artefact.package)
    builder = GatedBuilder(tmp_path, events)
    compiled = CompiledForward(chunk=CHUNK, min_samples=32, builder=builder)

    def launch(problem: Problem) -> None:
        result, _ = run_strategy(problem, "auto", compiled)
        events.append("compiled" if compiled._launches else "eager")
        assert_matches_closed_form(problem, result.values, result.derivatives, "forward")

    launch(black_scholes(builtins, 100))  # asks for the build, answered eagerly at once
    assert compiled.swap_in(CPU) == 0  # between launches: the build has not finished
    launch(black_scholes(builtins, 120))  # still eagerly, and no second build
    builder.done.set_result(artefact)
    events.append("build finished")
    launch(black_scholes(builtins, 130))  # not swapped in yet: eagerly
    assert compiled.swap_in(CPU) == 1
    launch(black_scholes(builtins, 140))
    assert events == ["build asked for", "eager", "eager", "build finished", "eager",
                      "compiled"]


def wrong_by_half(graph: Graph, after: int = 0) -> Graph:
    """The graph with its values 50% off from its ``after + 1``-th call on."""
    calls = [0]

    def call(cols: Tensor, params: dict[str, Tensor]) -> tuple[Tensor, ...]:
        values, *tangents = graph(cols, params)
        calls[0] += 1
        return (values * 1.5 if calls[0] > after else values, *tangents)

    return call


@needs_cxx
def test_a_live_mismatch_retires_the_graph_and_is_counted(
        builtins: dict[str, Routine], built: CompiledForward, tmp_path: Path) -> None:
    """Re-checked on the first launch and every RECHECK_EVERY-th: a graph that goes wrong
    after its first launch is caught at the next re-check, on outputs of 1e-10 too."""
    compiled = copy_of(built, tmp_path, recheck_every=3)
    problem = decay_per_sample(builtins, CHUNK, scale=1e-10)  # one call a launch
    assert compiled.run(problem) is None  # found in the cache directory: swapped in next
    assert compiled.swap_in(CPU) == 1
    key = (kind_of(problem), "cpu")
    compiled.catalogue._graphs[key] = wrong_by_half(compiled.catalogue.loaded[key], after=1)
    before = scrape_refusals()
    assert compiled.run(problem) is not None  # launch 1: re-checked, right
    for _ in range(2):  # launches 2 and 3 are not re-checked: served (the price of sampling)
        assert compiled.run(problem) is not None
    assert compiled.run(problem) is None  # launch 4: re-checked, wrong, retired
    assert compiled.refused(problem) == "recheck" and key not in compiled.catalogue.loaded
    assert scrape_refusals()["recheck"] - before["recheck"] == 1
    assert not list(tmp_path.glob("exponential_decay-*"))  # not loaded again at a restart
    result, ran = run_strategy(problem, "auto", compiled)  # eagerly from now on, and right
    assert ran == "forward" and compiled.run(problem) is None
    assert_close(result.derivatives["k"], differentiate(problem, "forward")[0].derivatives["k"],
                 rtol=1e-15)


@needs_cxx
def test_past_max_graphs_launches_run_eagerly_and_a_metric_says_so(
        builtins: dict[str, Routine], built: CompiledForward, tmp_path: Path) -> None:
    compiled = copy_of(built, tmp_path, max_graphs=1)
    first = black_scholes(builtins, 100)
    compiled.request(first)
    assert compiled.swap_in(CPU) == 1
    before = scrape_refusals()
    other = decay_per_sample(builtins, 100)
    assert compiled.run(other) is None and compiled.refused(other) == "max_graphs"
    assert compiled.run(other) is None  # counted once per kind
    assert scrape_refusals()["max_graphs"] - before["max_graphs"] == 1
    assert compiled.run(first) is not None


def scrape_refusals() -> dict[str, float]:
    from prometheus_client import REGISTRY, generate_latest

    samples = scrape(generate_latest(REGISTRY).decode())
    return {reason: value(samples, "dydc_compile_refusals_total", reason=reason)
            for reason in ("recheck", "max_graphs", "verification", "trace", "operations")}


def test_small_launches_and_opted_out_routines_run_eagerly(
        builtins: dict[str, Routine], tmp_path: Path) -> None:
    import dataclasses

    compiled = CompiledForward(chunk=CHUNK, min_samples=32, builder=InlineBuilder(tmp_path))
    assert not compiled.applies(problem_for(builtins["linear"], 31))
    assert compiled.applies(problem_for(builtins["linear"], 32))
    opted_out = dataclasses.replace(builtins["linear"], compile=False)
    assert not compiled.applies(problem_for(opted_out, 1000))


def test_what_cannot_trace_is_refused_and_not_tried_again(
        builtins: dict[str, Routine], tmp_path: Path) -> None:
    compiled = CompiledForward(chunk=CHUNK, min_samples=32, builder=InlineBuilder(tmp_path))
    problem = problem_for(builtins["gamma_survival"], 40)  # igammac: no forward formula
    before = scrape_refusals()
    result, ran = run_strategy(problem, "auto", compiled)
    assert ran == "vmap-grad"
    compiled.swap_in(CPU)
    assert compiled.refused(problem) == "trace" and not compiled.applies(problem)
    assert scrape_refusals()["trace"] - before["trace"] == 1
    assert_matches_closed_form(problem, result.values, result.derivatives, ran)


@needs_cxx
@pytest.mark.anyio
async def test_the_service_answers_eagerly_then_compiled(make_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import anyio

    form = CLOSED_FORMS["linear"]
    x = form.batch(100, seed=5)
    name = "dydc_compiled_graphs_total"
    async with make_client(compile_min_samples=50, compile_chunk=32,
                           compile_cache_dir=tmp_path / "cache") as c:
        async def ask() -> None:
            resp = await c.post("/v1/routines/linear/sensitivities",
                                json={"inputs": x[:, 0].tolist(), "params": {"C": 1.5}})
            assert resp.status_code == 200, resp.text
            body = resp.json()
            assert body["strategy"] == "forward"
            assert body["derivatives"]["C"] == x[:, 0].tolist()
            assert body["values"] == pytest.approx((1.5 * x[:, 0]).tolist(), rel=1e-15)

        before = scrape((await c.get("/metrics")).text)
        await ask()  # answered at once, eagerly; the build runs in its own process
        with anyio.fail_after(240):
            while value(scrape((await c.get("/metrics")).text), name, routine="linear") == \
                    value(before, name, routine="linear"):
                await anyio.sleep(0.2)
        await ask()  # swapped in before this launch
    assert (tmp_path / "cache").stat().st_mode & 0o777 == 0o700
    assert list((tmp_path / "cache").glob("linear-float64-cpu-*.pt2"))


@pytest.mark.anyio
async def test_compiling_can_be_switched_off(make_client) -> None:  # type: ignore[no-untyped-def]
    async with make_client(compile=False, compile_min_samples=2) as c:
        before = scrape((await c.get("/metrics")).text)
        resp = await c.post("/v1/routines/linear/sensitivities",
                            json={"inputs": [1.0, 2.0], "params": {"C": 1.5}})
        assert resp.json()["derivatives"]["C"] == [1.0, 2.0]
        after = scrape((await c.get("/metrics")).text)
        name = "dydc_compiled_graphs_total"
        assert value(after, name) == value(before, name)


def test_the_traced_graph_takes_any_batch_size(builtins: dict[str, Routine]) -> None:
    """Traced at TRACE_N samples, with that size then replaced by the inputs' own: none of it
    is left in the graph, which runs as it is (not compiled) at another N with eager forward
    mode's numbers; here with three outputs a sample and a per-sample parameter."""
    r = builtins["softmax"]
    n = 50
    x = problem_for(r, n).inputs
    problem = Problem(r, x, {"T": torch.linspace(0.5, 2.0, n, dtype=torch.float64)}, ("T",))
    gm = forward_graph(problem)

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


_MMAPPED = """
import ctypes, sys, torch
from app.engine import cache_host_allocations
class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks",
                "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Mallinfo2
if sys.argv[1] == "cached":
    assert cache_host_allocations()
before = libc.mallinfo2().hblkhd
x = torch.empty(2_000_000, dtype=torch.float64)  # 16 MB: over glibc's first mmap threshold
print(libc.mallinfo2().hblkhd - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_host_allocations_are_cached_on_linux() -> None:
    """A large tensor comes from the heap, which keeps it when freed, not from a mapping of
    its own (glibc's mallinfo2: bytes in mmapped blocks), in a fresh process each way."""
    def mmapped(mode: str) -> int:
        done = subprocess.run([sys.executable, "-c", _MMAPPED, mode], capture_output=True,
                              text=True, timeout=120, cwd=ROOT)
        assert done.returncode == 0, done.stderr
        return int(done.stdout.split()[-1])

    assert mmapped("default") >= 16_000_000  # glibc's own way: a mapping per large block
    assert mmapped("cached") == 0


def test_warm_up_waits_for_launches_in_flight(builtins: dict[str, Routine]) -> None:
    """Forward-AD levels are process-wide: a worker warming up (after a restart, say) must not
    run jvp beside another worker's launch, so it takes the same lock as launches."""
    routines, cpu = {"linear": builtins["linear"]}, Executor(torch.device("cpu"))
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


def test_a_finished_build_is_loaded_in_the_builders_thread_not_the_workers(
        builtins: dict[str, Routine], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a package costs up to a second the first time: it happens as the build
    finishes, where the builder reports it; the worker's swap_in only publishes it."""
    loads: list[str] = []

    def load(artefact: Artefact, cache_dir: Path, device: torch.device) -> object:
        loads.append(threading.current_thread().name)
        return lambda cols, params: (cols[0], cols[0])

    monkeypatch.setattr(catalogue_module, "load", load)
    builder = GatedBuilder(tmp_path)
    compiled = CompiledForward(chunk=CHUNK, min_samples=2, builder=builder)
    assert compiled.swap_in(CPU) == 0  # the worker serves the CPU
    problem = problem_for(builtins["linear"], 10)
    assert compiled.run(problem) is None
    [kind] = builder.kinds
    finish = threading.Thread(target=builder.done.set_result, name="builder",
                              args=(Artefact(kind, "linear.pt2", None, 1.0),))
    finish.start()
    finish.join()
    assert compiled.settle(0) and loads == ["builder"]
    assert compiled.swap_in(CPU) == 1 and loads == ["builder"]  # published, not loaded again
    assert compiled.compiled(builtins["linear"], ("C",), torch.float64)


def test_a_finished_build_waits_for_large_requests_to_end_before_it_is_loaded(
        builtins: dict[str, Routine], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading holds the interpreter's lock for a while: not while a large request is
    served (app.engine.compiled.pacing), unless none ends within a bound."""
    events: list[str] = []

    def load(artefact: Artefact, cache_dir: Path, device: torch.device) -> object:
        events.append("loaded")
        return lambda cols, params: (cols[0], cols[0])

    monkeypatch.setattr(catalogue_module, "load", load)
    builder = GatedBuilder(tmp_path)
    compiled = CompiledForward(chunk=CHUNK, min_samples=2, builder=builder,
                               pacer=Pacer(lambda: None, share=0.5))
    compiled.swap_in(CPU)
    assert compiled.run(problem_for(builtins["linear"], 10)) is None
    [kind] = builder.kinds
    finish = threading.Thread(target=builder.done.set_result, name="builder",
                              args=(Artefact(kind, "linear.pt2", None, 1.0),))
    problem = problem_for(builtins["linear"], 10)
    with compiled.serving_large():
        finish.start()
        finish.join(0.5)
        # meanwhile the kind is still being built as far as launches can tell: eagerly, and
        # not asked for again (nor looked for in the cache directory)
        assert compiled.run(problem) is None
        assert len(builder.kinds) == 1
        events.append("large request served")
    finish.join(10)
    assert not finish.is_alive()
    assert events == ["large request served", "loaded"]
    assert compiled.settle(0) and compiled.swap_in(CPU) == 1
    compiled.close()


@needs_cxx
def test_a_graph_found_in_the_cache_directory_is_loaded_between_launches_not_in_one(
        builtins: dict[str, Routine], built: CompiledForward, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The launch that finds it (during a large request) goes on eagerly at once: it neither
    loads it nor waits for the large request to end; the next swap_in loads it."""
    loads: list[str] = []
    real_load = builds.load

    def load(artefact: Artefact, cache_dir: Path, device: torch.device) -> object:
        loads.append(threading.current_thread().name)
        return real_load(artefact, cache_dir, device)

    monkeypatch.setattr(catalogue_module, "load", load)
    compiled = copy_of(built, tmp_path, pacer=Pacer(lambda: None, share=0.5))
    compiled.swap_in(CPU)  # the worker serves the CPU
    problem = black_scholes(builtins, 100)
    answers: list[object] = []
    launch = threading.Thread(target=lambda: answers.append(compiled.run(problem)),
                              name="worker")
    with compiled.serving_large():
        launch.start()
        launch.join(20)  # the large request is still in progress
        assert not launch.is_alive() and answers == [None] and loads == []
    assert compiled.swap_in(CPU) == 1 and loads == ["MainThread"]
    result = compiled.run(problem)
    assert result is not None
    assert_matches_closed_form(problem, result.values, result.derivatives, "forward")
    compiled.close()
