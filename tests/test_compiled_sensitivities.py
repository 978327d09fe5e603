"""Order 2 and input features through torch.compile (app.engine.compiled_sensitivities): the
same numbers as the closed forms and as eager forward mode, for shared and per-sample
parameters, in chunks; and what stays eager."""

from __future__ import annotations

import pytest
import torch

from app.engine import CompiledForward, compiled_sensitivities
from app.engine.compiled_sensitivities import CompiledSensitivities, for_settings
from app.engine.compute import differentiate
from app.engine.input_sensitivities import with_features_as_params
from app.engine.strategies import Problem
from routines import discover
from tests import closed_forms as cf
from tests.support import needs_cxx

F64 = torch.float64
ROUTINES = discover()


@needs_cxx
def test_compiled_order_2_matches_closed_forms_shared_and_per_sample() -> None:
    compiled = CompiledForward(chunk=16, min_samples=8)
    second = for_settings(compiled)
    assert for_settings(compiled) is second
    n = 41  # three chunks of 16, the last merged so that no call has one sample
    g = torch.Generator().manual_seed(3)
    x = torch.stack([1 + 4 * torch.rand(n, generator=g, dtype=F64),
                     0.1 + 3 * torch.rand(n, generator=g, dtype=F64)], 1)
    ks = 0.1 + torch.rand(n, generator=g, dtype=F64)
    for k in (torch.tensor(0.7, dtype=F64), ks):
        problem = Problem(ROUTINES["exponential_decay"], x, {"k": k}, ("k",))
        assert second.applies(problem, cross=False, order=2)
        result, ran = differentiate(problem, "forward", compiled, order=2)
        assert ran == "forward" and second.compiled(problem, cross=False, order=2)
        for i in range(n):
            kk = float(k) if k.dim() == 0 else float(k[i])
            want = cf.exponential_decay(float(x[i, 0]), float(x[i, 1]), kk)
            assert float(result.values[i, 0]) == pytest.approx(want["y"], rel=1e-12)
            assert float(result.derivatives["k"][i, 0]) == pytest.approx(want["k"], rel=1e-12)
            assert float(result.derivatives["k,k"][i, 0]) == pytest.approx(want["k,k"],
                                                                            rel=1e-12)


@needs_cxx
def test_compiled_cross_terms_match_eager() -> None:
    second = CompiledSensitivities(min_samples=4, chunk=1 << 20)
    t = torch.linspace(0.1, 9.0, 23, dtype=F64)[:, None]
    problem = Problem(ROUTINES["damped_oscillator"], t,
                      {"gamma": torch.tensor(0.1, dtype=F64),
                       "omega": torch.tensor(1.3, dtype=F64)}, ("gamma", "omega"))
    got = second.run(problem, cross=True, order=2)
    eager, _ = differentiate(problem, "forward", order=2, cross=True)
    assert got is not None
    assert list(got.derivatives) == list(eager.derivatives) == [
        "gamma", "omega", "gamma,gamma", "gamma,omega", "omega,omega"]
    for key, want in eager.derivatives.items():
        assert torch.allclose(got.derivatives[key], want, rtol=1e-12, atol=1e-14), key


def test_what_stays_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    second = CompiledSensitivities(min_samples=8, chunk=1 << 20)
    x = torch.ones(16, 2, dtype=F64)
    k = {"k": torch.tensor(0.7, dtype=F64)}
    small = Problem(ROUTINES["exponential_decay"], x[:4], k, ("k",))
    assert not second.applies(small, cross=False, order=2)  # under min_samples
    # a long graph (an unrolled loop, as logistic_rk4's 9,612 operations) is refused, for good
    monkeypatch.setattr(compiled_sensitivities, "MAX_OPERATIONS", 3)
    long = Problem(ROUTINES["exponential_decay"], x, k, ("k",))
    assert second.applies(long, cross=False, order=2)
    assert second.run(long, cross=False, order=2) is None
    assert not second.applies(long, cross=False, order=2)
    result, ran = differentiate(long, "forward", order=2)  # eager, as the caller then runs it
    assert ran == "forward" and torch.isfinite(result.derivatives["k,k"]).all()


@needs_cxx
def test_delta_runs_compiled_like_a_parameter() -> None:
    compiled = CompiledForward(chunk=1 << 20, min_samples=8)
    n = 20
    x = torch.stack([torch.linspace(80, 120, n, dtype=F64), torch.full((n,), 100.0, dtype=F64),
                     torch.linspace(0.25, 2, n, dtype=F64)], 1)
    sigmas = torch.linspace(0.1, 0.6, n, dtype=F64)
    problem = with_features_as_params(Problem(
        ROUTINES["black_scholes_call"], x, {"sigma": sigmas, "r": torch.tensor(0.05, dtype=F64)},
        ("S",)))
    result, ran = differentiate(problem, "forward", compiled)
    assert ran == "forward" and for_settings(compiled).compiled(problem, cross=False, order=1)
    for i in range(n):
        want = cf.black_scholes_greeks(float(x[i, 0]), 100.0, float(x[i, 2]),
                                       float(sigmas[i]), 0.05)
        assert float(result.derivatives["S"][i, 0]) == pytest.approx(want["S"], rel=1e-12)
