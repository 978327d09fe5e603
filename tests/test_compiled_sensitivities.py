"""Order 2 and input features through compiled forward mode (app.engine.compiled.forward and
app.engine.compiled.builds): kinds of their own, built outside the serving path like order 1's, with
the same numbers as the closed forms and as eager forward mode, for shared and per-sample
parameters, in chunks, whatever order wrt names them in; and what stays eager."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from app.engine import CompiledForward
from app.engine.compiled import builds
from app.engine.compiled.builds import InlineBuilder, kind_of, locate
from app.engine.differentiation.differentiate import differentiate
from app.engine.differentiation.input_sensitivities import with_features_as_params
from app.engine.differentiation.strategies import Problem
from app.engine.runtime.executor import run_strategy
from routines import discover
from tests.support import GatedBuilder, needs_cxx
from tests.support import closed_forms as cf

F64 = torch.float64
CPU = torch.device("cpu")
ROUTINES = discover()


def built(problem: Problem, compiled: CompiledForward, order: int,
          cross: bool = False) -> Any:
    """The problem through compiled forward mode: the first call asks for the build (inline
    here, so done when it returns) and answers None; the graph is swapped in, and then
    serves."""
    assert compiled.run(problem, order, cross) is None
    assert compiled.swap_in(CPU) == 1, dict(compiled.catalogue.refusals)
    got = compiled.run(problem, order, cross)
    assert got is not None
    return got


@pytest.mark.parametrize(("wrt", "order"), [(("t",), 2), (("t",), 1), (("k", "y0"), 2),
                                            (("k",), 2)])
def test_order_2_and_input_features_run_eagerly_while_their_kind_is_built(
        tmp_path: Path, wrt: tuple[str, ...], order: int) -> None:
    """Never a wait: the launch asks for its own kind (its order, its features) and runs
    eager forward mode at once."""
    builder = GatedBuilder(tmp_path)  # its build never finishes here
    compiled = CompiledForward(chunk=1 << 20, min_samples=2, builder=builder)
    x = torch.tensor([[2.0, 0.5], [1.0, 3.0], [4.0, 1.5]], dtype=F64)
    problem = with_features_as_params(Problem(ROUTINES["exponential_decay"], x,
                                              {"k": torch.tensor(0.7, dtype=F64)}, wrt))
    got, ran = run_strategy(problem, "forward", compiled, order=order)
    eager, _ = differentiate(problem, "forward", order=order)
    assert ran == "forward" and got.derivatives.keys() == eager.derivatives.keys()
    for key, want in eager.derivatives.items():
        assert torch.equal(got.derivatives[key], want), key
    [kind] = builder.kinds
    assert kind.order == order
    assert kind.features == tuple(w for w in wrt if w in ("y0", "t"))
    assert kind.per_sample == bool(kind.features)
    assert locate(kind) is problem.routine  # what the build process will differentiate


@needs_cxx
def test_compiled_order_2_matches_closed_forms_shared_and_per_sample(tmp_path: Path) -> None:
    compiled = CompiledForward(chunk=16, min_samples=8, builder=InlineBuilder(tmp_path))
    n = 41  # three chunks of 16, the last merged so that no call has one sample
    g = torch.Generator().manual_seed(3)
    x = torch.stack([1 + 4 * torch.rand(n, generator=g, dtype=F64),
                     0.1 + 3 * torch.rand(n, generator=g, dtype=F64)], 1)
    ks = 0.1 + torch.rand(n, generator=g, dtype=F64)
    per_sample = Problem(ROUTINES["exponential_decay"], x, {"k": ks}, ("k",))
    results = [(ks, built(per_sample, compiled, order=2))]
    shared = Problem(ROUTINES["exponential_decay"], x, {"k": torch.tensor(0.7, dtype=F64)},
                     ("k",))
    results.append((shared.params["k"], compiled.run(shared, 2)))  # the per-sample graph
    for k, result in results:
        assert result is not None
        for i in range(n):
            kk = float(k) if k.dim() == 0 else float(k[i])
            want = cf.exponential_decay(float(x[i, 0]), float(x[i, 1]), kk)
            assert float(result.values[i, 0]) == pytest.approx(want["y"], rel=1e-12)
            assert float(result.derivatives["k"][i, 0]) == pytest.approx(want["k"], rel=1e-12)
            assert float(result.derivatives["k,k"][i, 0]) == pytest.approx(want["k,k"],
                                                                            rel=1e-12)


@needs_cxx
def test_compiled_cross_terms_match_eager_in_either_order_of_wrt(tmp_path: Path) -> None:
    compiled = CompiledForward(chunk=1 << 20, min_samples=4, builder=InlineBuilder(tmp_path))
    t = torch.linspace(0.1, 9.0, 23, dtype=F64)[:, None]
    params = {"gamma": torch.tensor(0.1, dtype=F64), "omega": torch.tensor(1.3, dtype=F64)}
    built(Problem(ROUTINES["damped_oscillator"], t, params, ("gamma", "omega")), compiled,
          order=2, cross=True)
    for wrt in (("gamma", "omega"), ("omega", "gamma")):  # one graph for both
        problem = Problem(ROUTINES["damped_oscillator"], t, params, wrt)
        got = compiled.run(problem, 2, True)
        eager, _ = differentiate(problem, "forward", order=2, cross=True)
        assert got is not None and compiled.graphs == 1
        assert list(got.derivatives) == list(eager.derivatives)
        for key, want in eager.derivatives.items():
            assert torch.allclose(got.derivatives[key], want, rtol=1e-12, atol=1e-14), key
    for i, ti in enumerate(t[:, 0].tolist()):  # and the closed form, off the diagonal too
        want = cf.damped_oscillator(ti, 0.1, 1.3)
        assert float(got.derivatives["omega,gamma"][i, 0]) == pytest.approx(
            want["gamma,omega"], rel=1e-9, abs=1e-12)


def test_what_stays_eager(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    compiled = CompiledForward(chunk=1 << 20, min_samples=8, builder=InlineBuilder(tmp_path))
    x = torch.ones(16, 2, dtype=F64)
    k = {"k": torch.tensor(0.7, dtype=F64)}
    small = Problem(ROUTINES["exponential_decay"], x[:4], k, ("k",))
    assert not compiled.applies(small, 2)  # under min_samples
    # a long graph (an unrolled loop, as logistic_rk4's 9,612 operations) is refused for good:
    # order 2 rolls no loop
    monkeypatch.setattr(builds, "MAX_OPERATIONS", 3)
    long = Problem(ROUTINES["exponential_decay"], x, k, ("k",))
    assert compiled.applies(long, 2)
    assert compiled.run(long, 2) is None
    assert compiled.refused(long, 2) == "operations" and not compiled.applies(long, 2)
    result, ran = run_strategy(long, "forward", compiled, order=2)  # eager, at once
    assert ran == "forward" and torch.isfinite(result.derivatives["k,k"]).all()


@needs_cxx
def test_delta_runs_compiled_like_a_parameter(tmp_path: Path) -> None:
    compiled = CompiledForward(chunk=1 << 20, min_samples=8, builder=InlineBuilder(tmp_path))
    n = 20
    x = torch.stack([torch.linspace(80, 120, n, dtype=F64), torch.full((n,), 100.0, dtype=F64),
                     torch.linspace(0.25, 2, n, dtype=F64)], 1)
    sigmas = torch.linspace(0.1, 0.6, n, dtype=F64)
    problem = with_features_as_params(Problem(
        ROUTINES["black_scholes_call"], x, {"sigma": sigmas, "r": torch.tensor(0.05, dtype=F64)},
        ("S",)))
    assert kind_of(problem).features == ("S",)
    result = built(problem, compiled, order=1)
    for i in range(n):
        want = cf.black_scholes_greeks(float(x[i, 0]), 100.0, float(x[i, 2]),
                                       float(sigmas[i]), 0.05)
        assert float(result.derivatives["S"][i, 0]) == pytest.approx(want["S"], rel=1e-12)
