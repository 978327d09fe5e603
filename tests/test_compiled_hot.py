"""Small launches of a hot kind run compiled (app.engine.compiled.forward,
DYDC_COMPILE_HOT_LAUNCHES): eager until the kind has been launched ``hot_launches`` times, then its
build is asked for (once), and once loaded every launch of 2 samples or more goes through the graph,
per-sample and shared parameters alike, with eager forward mode's numbers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from app.config import Settings
from app.engine import CompiledForward
from app.engine.compiled.builds import InlineBuilder
from app.engine.differentiation.differentiate import differentiate
from app.engine.differentiation.strategies import Problem
from app.engine.runtime.executor import run_strategy
from routines import discover
from tests.support import needs_cxx

CPU = torch.device("cpu")
F64 = torch.float64
ROUTINES = discover()


class CountingBuilder(InlineBuilder):
    def __init__(self, cache_dir: Path) -> None:
        super().__init__(cache_dir)
        self.kinds: list[object] = []

    def submit(self, kind, samples, routine):  # type: ignore[no-untyped-def]
        self.kinds.append(kind)
        return super().submit(kind, samples, routine)


def _problem(n: int, per_sample: bool) -> Problem:
    x = torch.linspace(-2.0, 3.0, n, dtype=F64).reshape(n, 1)
    t = torch.linspace(0.1, 1.2, 1 if not per_sample else n, dtype=F64)
    params = {"k": t if per_sample else t[0]}
    return Problem(ROUTINES["exponential_decay"], torch.cat([x.abs() + 1, x], 1), params,
                   ("k",))


@needs_cxx
def test_a_hot_kind_runs_its_small_launches_compiled(tmp_path: Path) -> None:
    builder = CountingBuilder(tmp_path)
    compiled = CompiledForward(chunk=1 << 20, min_samples=100_000, hot_launches=3,
                               builder=builder)
    small = _problem(16, per_sample=True)
    eager, _ = differentiate(small, "forward")
    for _ in range(2):  # not hot yet: eager, and no build asked for
        assert not compiled.applies(small)
    assert builder.kinds == []
    assert compiled.applies(small)  # the third: hot
    assert compiled.run(small) is None  # asks for the build (inline here), runs eagerly
    assert len(builder.kinds) == 1
    assert compiled.swap_in(CPU) == 1
    for problem in (small, _problem(1000, per_sample=True), _problem(7, per_sample=False)):
        assert compiled.applies(problem)
        got, ran = run_strategy(problem, "forward", compiled)
        want, _ = differentiate(problem, "forward")
        assert ran == "forward"
        torch.testing.assert_close(got.values, want.values, rtol=1e-14, atol=0)
        torch.testing.assert_close(got.derivatives["k"], want.derivatives["k"], rtol=1e-13,
                                   atol=0)
    assert sum(compiled._launches.values()) == 3  # every one through the graph
    assert len(builder.kinds) == 1
    got, _ = run_strategy(small, "forward", compiled)
    torch.testing.assert_close(got.derivatives["k"], eager.derivatives["k"], rtol=1e-13, atol=0)
    one = _problem(1, per_sample=True)  # a graph never takes one sample
    assert not compiled.applies(one)
    # small launches teach admission nothing: their time is the call's fixed cost, which
    # would price a large request far over what it takes
    assert compiled._rates == {}
    assert compiled.launch_seconds(_problem(200_000, per_sample=True), CPU) == 0.0


def test_off_by_zero_and_the_setting_reaches_the_graphs(tmp_path: Path) -> None:
    builder = CountingBuilder(tmp_path)
    compiled = CompiledForward(chunk=1 << 20, min_samples=100_000, hot_launches=0,
                               builder=builder)
    small = _problem(16, per_sample=True)
    assert not any(compiled.applies(small) for _ in range(50))
    assert builder.kinds == []
    assert Settings().compile_hot_launches == 0  # the suite's (tests/conftest.py)
    assert Settings.model_fields["compile_hot_launches"].default == 100


@pytest.mark.anyio
async def test_the_service_passes_the_setting_on() -> None:
    import anyio
    from asgi_lifespan import LifespanManager

    from app.main import create_app

    app = create_app(Settings(device="cpu", warmup=False, compile_hot_launches=5))
    with anyio.fail_after(60):
        async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60):
            assert app.state.engine._compiled.hot_launches == 5
