"""Second derivatives (app.engine.differentiation.second_order), without HTTP: every strategy that
supports order 2 against closed forms in float64, the "a,b" keys, and what may not run at order
2."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from app.engine.differentiation.bumping import Bump
from app.engine.differentiation.capabilities import refusal, supports_order2
from app.engine.differentiation.differentiate import differentiate
from app.engine.differentiation.input_sensitivities import with_features_as_params
from app.engine.differentiation.strategies import STRATEGIES, Problem
from routines import discover
from tests.support import closed_forms as cf

ROUTINES = discover()
EXACT = ["auto", "forward", "jacfwd", "vmap-grad"]  # AD: agrees to rounding
ORDER2 = [*EXACT, "finite-difference"]
F64 = torch.float64


def _problem(routine: str, rows: list[list[float]], params: dict[str, Any],
             wrt: tuple[str, ...]) -> Problem:
    tensors = {k: torch.tensor(v, dtype=F64) for k, v in params.items()}
    return with_features_as_params(
        Problem(ROUTINES[routine], torch.tensor(rows, dtype=F64), tensors, wrt))


def _tolerance(strategy: str, scale: float) -> dict[str, float]:
    """AD to rounding; second differences (h = eps^(1/4) max(1, |v|)) to about 1e-7 of the
    function's scale, first differences to about 1e-10 (bumping's docstring): with margin."""
    if strategy == "finite-difference":
        return {"rel": 1e-5, "abs": 1e-5 * scale}
    return {"rel": 1e-10, "abs": 1e-12}


def _check(got: dict[str, torch.Tensor], want: list[dict[str, float]], strategy: str) -> None:
    for key, tensor in got.items():
        for i, expected in enumerate(want):
            scale = max(1.0, abs(expected.get("price", expected.get("y", 1.0))))
            assert float(tensor[i, 0]) == pytest.approx(expected[key],
                                                        **_tolerance(strategy, scale)), (key, i)


@pytest.mark.parametrize("strategy", ORDER2)
def test_black_scholes_greeks_on_hulls_example(strategy: str) -> None:
    h = cf.HULL
    problem = _problem("black_scholes_call", [[h["S"], h["K"], h["T"]]],
                       {"sigma": h["sigma"], "r": h["r"]}, ("S", "sigma", "r"))
    result, ran = differentiate(problem, strategy, order=2, cross=True)
    want = cf.black_scholes_greeks(**h)
    assert ran == ("forward" if strategy == "auto" else strategy)
    assert list(result.derivatives) == ["S", "sigma", "r", "S,S", "S,sigma", "S,r",
                                        "sigma,sigma", "sigma,r", "r,r"]
    # Hull's numbers, then the closed forms to the strategy's accuracy
    d = {k: float(v[0, 0]) for k, v in result.derivatives.items()}
    assert d["S"] == pytest.approx(0.522, abs=5e-4)
    assert d["S,S"] == pytest.approx(0.066, abs=5e-4)
    assert d["sigma"] == pytest.approx(12.1, abs=0.05)
    assert d["r"] == pytest.approx(8.91, abs=5e-3)
    assert float(result.values[0, 0]) == pytest.approx(want["price"], rel=1e-12)
    _check({k: v for k, v in result.derivatives.items() if k in want}, [want], strategy)


@pytest.mark.parametrize("strategy", ORDER2)
def test_per_sample_sigma_second_order_matches_each_sample(strategy: str) -> None:
    rows = [[49.0, 50.0, 0.3846], [100.0, 95.0, 0.5], [80.0, 100.0, 2.0]]
    sigmas = [0.2, 0.35, 0.6]
    problem = _problem("black_scholes_call", rows, {"sigma": sigmas, "r": 0.05}, ("S", "sigma"))
    result, _ = differentiate(problem, strategy, order=2, cross=True)
    want = [cf.black_scholes_greeks(S, K, T, s, 0.05) for (S, K, T), s in
            zip(rows, sigmas, strict=True)]
    assert set(result.derivatives) == {"S", "sigma", "S,S", "S,sigma", "sigma,sigma"}
    _check(result.derivatives, want, strategy)


@pytest.mark.parametrize("strategy", ORDER2)
def test_exponential_decay_d2_dk2_and_the_cross_term_with_an_input(strategy: str) -> None:
    rows = [[2.0, 0.5], [1.0, 3.0], [5.0, 1.25]]
    k = 0.7
    problem = _problem("exponential_decay", rows, {"k": k}, ("k", "y0"))
    result, _ = differentiate(problem, strategy, order=2, cross=True)
    want = [cf.exponential_decay(y0, t, k) for y0, t in rows]
    for i, (_y0, t) in enumerate(rows):  # the forms, literally
        y = float(result.values[i, 0])
        tol = _tolerance(strategy, max(1.0, abs(y)))
        assert float(result.derivatives["k,k"][i, 0]) == pytest.approx(t * t * y, **tol)
        assert float(result.derivatives["k,y0"][i, 0]) == pytest.approx(-t * torch.exp(
            torch.tensor(-k * t, dtype=F64)).item(), **tol)
    _check(result.derivatives, want, strategy)


@pytest.mark.parametrize("strategy", ORDER2)
def test_logistic_growth_second_derivatives(strategy: str) -> None:
    rows = [[10.0, 2.0], [50.0, 0.5], [120.0, 4.0]]
    problem = _problem("logistic_growth", rows, {"r": 0.5, "K": 100.0}, ("r", "K"))
    result, _ = differentiate(problem, strategy, order=2, cross=True)
    _check(result.derivatives, [cf.logistic_growth(n0, t, 0.5, 100.0) for n0, t in rows],
           strategy)


@pytest.mark.parametrize("strategy", ORDER2)
def test_damped_oscillator_diagonal_only_without_cross(strategy: str) -> None:
    rows = [[0.5], [2.0], [7.5]]
    problem = _problem("damped_oscillator", rows, {"gamma": 0.1, "omega": 1.3},
                       ("gamma", "omega"))
    result, _ = differentiate(problem, strategy, order=2, cross=False)
    assert list(result.derivatives) == ["gamma", "omega", "gamma,gamma", "omega,omega"]
    _check(result.derivatives, [cf.damped_oscillator(t, 0.1, 1.3) for (t,) in rows], strategy)
    crossed, _ = differentiate(problem, strategy, order=2, cross=True)
    _check(crossed.derivatives, [cf.damped_oscillator(t, 0.1, 1.3) for (t,) in rows], strategy)
    assert "gamma,omega" in crossed.derivatives


def test_keys_follow_wrt_order() -> None:
    problem = _problem("black_scholes_call", [[49.0, 50.0, 0.3846]],
                       {"sigma": 0.2, "r": 0.05}, ("sigma", "S"))
    result, _ = differentiate(problem, "forward", order=2, cross=True)
    assert list(result.derivatives) == ["sigma", "S", "sigma,sigma", "sigma,S", "S,S"]


def test_auto_falls_back_to_reverse_mode_where_forward_mode_lacks_a_formula() -> None:
    problem = _problem("gamma_survival", [[2.0, 1.5], [3.0, 0.5]], {"lam": 0.8}, ("lam",))
    result, ran = differentiate(problem, "auto", order=2)
    bumped, _ = differentiate(problem, "finite-difference", order=2)
    assert ran == "vmap-grad"
    for key in ("lam", "lam,lam"):
        assert torch.allclose(result.derivatives[key], bumped.derivatives[key], rtol=1e-5,
                              atol=1e-6)


def test_which_strategies_have_a_second_order() -> None:
    assert {s for s in STRATEGIES if supports_order2(s)} == set(ORDER2)
    reason = refusal("forward-dual", ROUTINES["linear"], order=2, per_sample=False)
    assert reason is not None and "cannot nest" in reason
    assert all(s in reason for s in ORDER2)


def test_second_differences_take_the_bump_settings() -> None:
    rows = [[2.0, 0.5], [1.0, 3.0]]
    problem = _problem("exponential_decay", rows, {"k": 0.7}, ("k",))
    want = [cf.exponential_decay(y0, t, 0.7)["k,k"] for y0, t in rows]
    for bump, rel in [(Bump(1e-3, "absolute", "central"), 1e-5),
                      (Bump(1e-4, "absolute", "forward"), 1e-3),
                      (Bump(1e-4, "relative", "backward"), 1e-3)]:
        result, _ = differentiate(problem, "finite-difference", order=2, bump=bump)
        got = result.derivatives["k,k"][:, 0].tolist()
        assert got == pytest.approx(want, rel=rel), bump
        assert got != pytest.approx(want, rel=1e-12)  # a difference quotient, not AD



def _vectorized_decay() -> Any:
    from routines import Param, Routine

    def fn(y0: torch.Tensor, t: torch.Tensor, *, k: torch.Tensor) -> torch.Tensor:
        return y0 * torch.exp(-k * t)  # whole columns, k 0-d or (N,)

    return Routine(name="decay_columns", description="exponential decay on columns",
                   params=(Param("k", 1.0),), inputs=("y0", "t"), outputs=("y",), fn=fn,
                   vectorized=True)


def test_a_vectorized_routine_at_order_2() -> None:
    routine = _vectorized_decay()
    rows = [[2.0, 0.5], [1.0, 3.0]]
    x = torch.tensor(rows, dtype=F64)
    shared = Problem(routine, x, {"k": torch.tensor(0.7, dtype=F64)}, ("k",))
    for strategy in ("forward", "jacfwd", "finite-difference"):
        result, _ = differentiate(shared, strategy, order=2)
        _check(result.derivatives, [cf.exponential_decay(y0, t, 0.7) for y0, t in rows],
               strategy)
    per_sample = Problem(routine, x, {"k": torch.tensor([0.7, 0.2], dtype=F64)}, ("k",))
    result, _ = differentiate(per_sample, "forward", order=2)
    _check(result.derivatives, [cf.exponential_decay(2.0, 0.5, 0.7),
                                cf.exponential_decay(1.0, 3.0, 0.2)], "forward")
    from app.engine.errors import InvalidRequest
    with pytest.raises(InvalidRequest, match="strategy=forward"):
        differentiate(per_sample, "jacfwd", order=2)
    with pytest.raises(InvalidRequest, match="vectorized"):
        differentiate(shared, "vmap-grad", order=2)
    reason = refusal("jacfwd", routine, order=2, per_sample=True)
    assert reason is not None and "jacfwd" not in reason.split("use one of:")[1]


def test_float32_order_2_to_its_precision() -> None:
    h = cf.HULL
    problem = Problem(ROUTINES["black_scholes_call"],
                      torch.tensor([[h["S"], h["K"], h["T"]]], dtype=torch.float32),
                      {"sigma": torch.tensor(h["sigma"]), "r": torch.tensor(h["r"])},
                      ("sigma",))
    want = cf.black_scholes_greeks(**h)
    for strategy in ORDER2:
        result, _ = differentiate(problem, strategy, order=2)
        rel = 1e-2 if strategy == "finite-difference" else 1e-4
        assert float(result.derivatives["sigma,sigma"][0, 0]) == pytest.approx(
            want["sigma,sigma"], rel=rel, abs=rel * abs(want["price"])), strategy
