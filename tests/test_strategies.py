"""Every differentiation strategy against the closed forms, on Problems built directly (no
HTTP, no worker), plus the engine path through run_job where it adds something.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from app.engine.differentiation.differentiate import differentiate
from app.engine.differentiation.strategies import (
    AUTO_FALLBACK,
    STRATEGIES,
    Problem,
    lacks_forward_formula,
)
from routines import Param, Routine, discover, routine
from tests.support import (
    AD_RTOL,
    BUILTINS,
    CLOSED_FORMS,
    FD_RTOL,
    assert_close,
    assert_matches_closed_form,
    params_of,
    problem_for,
    run_engine,
)

ALL = [s for s in STRATEGIES if s != "auto"]
AD = [s for s in ALL if s != "finite-difference"]
FORWARD = [s for s in ALL if STRATEGIES[s].mode == "forward"]  # forward, forward-dual, jacfwd


@pytest.fixture(scope="module")
def builtins() -> dict[str, Routine]:
    return discover()


def batch_size(routine_name: str, strategy: str) -> int:
    # logistic_rk4 differentiates through 200 RK4 steps: one backward per sample is slow
    return 4 if (routine_name, strategy) == ("logistic_rk4", "reverse-loop") else 16


# -- every strategy x every routine ------------------------------------------------------------


@pytest.mark.parametrize("name", BUILTINS)
@pytest.mark.parametrize("strategy", ALL)
def test_strategy_matches_closed_form(strategy: str, name: str,
                                      builtins: dict[str, Routine]) -> None:
    problem = problem_for(builtins[name], batch_size(name, strategy))
    if name == "gamma_survival" and strategy in FORWARD:
        with pytest.raises(NotImplementedError) as exc:
            STRATEGIES[strategy].run(problem)
        assert lacks_forward_formula(exc.value)
        return
    got = STRATEGIES[strategy].run(problem)
    assert_matches_closed_form(problem, got.values, got.derivatives, strategy)


@pytest.mark.parametrize("name", BUILTINS)
def test_auto_runs_forward_or_falls_back(name: str, builtins: dict[str, Routine]) -> None:
    problem = problem_for(builtins[name], 16)
    got, ran = differentiate(problem, "auto")
    assert ran == (AUTO_FALLBACK if name == "gamma_survival" else "forward")
    assert AUTO_FALLBACK == "vmap-grad"
    assert_matches_closed_form(problem, got.values, got.derivatives, ran)


def test_auto_through_the_engine_names_the_fallback(builtins: dict[str, Routine]) -> None:
    form = CLOSED_FORMS["gamma_survival"]
    result = run_engine(builtins["gamma_survival"], form.batch(8), form.params)
    assert result.strategy == "vmap-grad"
    _, exact = form.expected(form.batch(8))
    assert_close(result.derivatives["lam"], exact["lam"], rtol=AD_RTOL)


def test_auto_does_not_hide_other_errors() -> None:
    @routine(description="raises NotImplementedError of its own", params=[Param("a", 1.0)],
             inputs=["x"])
    def unfinished(x: Tensor, *, a: Tensor) -> Tensor:
        raise NotImplementedError("not written yet")

    problem = Problem(unfinished, torch.ones(3, 1, dtype=torch.float64),
                      params_of(unfinished, {}, torch.float64), ("a",))
    with pytest.raises(NotImplementedError, match="not written yet"):
        differentiate(problem, "auto")


# -- which parameters ----------------------------------------------------------------------------


@pytest.mark.parametrize("wrt", [("sigma",), ("r",), ("r", "sigma"), ("sigma", "r")])
@pytest.mark.parametrize("strategy", ALL)
def test_parameter_subsets_in_the_order_asked(strategy: str, wrt: tuple[str, ...],
                                              builtins: dict[str, Routine]) -> None:
    problem = problem_for(builtins["black_scholes_call"], 16, wrt=wrt)
    got = STRATEGIES[strategy].run(problem)
    assert tuple(got.derivatives) == wrt
    assert_matches_closed_form(problem, got.values, got.derivatives, strategy)


@pytest.mark.parametrize("wrt", [("K",), ("r",), ("K", "r")])
@pytest.mark.parametrize("strategy", ALL)
def test_logistic_subsets(strategy: str, wrt: tuple[str, ...],
                          builtins: dict[str, Routine]) -> None:
    problem = problem_for(builtins["logistic_growth"], 16, wrt=wrt, seed=3)
    got = STRATEGIES[strategy].run(problem)
    assert tuple(got.derivatives) == wrt
    assert_matches_closed_form(problem, got.values, got.derivatives, strategy)


@routine(description="y = a x; b is declared but unused", params=[Param("a", 2.0),
         Param("b", 1.0)], inputs=["x"], outputs=["y", "x_again"])
def ignores_b(x: Tensor, *, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    return a * x, x


@pytest.mark.parametrize("wrt", [("b",), ("a", "b")])
@pytest.mark.parametrize("strategy", ALL)
def test_a_parameter_the_output_ignores_gives_zeros(strategy: str,
                                                    wrt: tuple[str, ...]) -> None:
    x = torch.linspace(-1, 1, 5, dtype=torch.float64)[:, None]
    problem = Problem(ignores_b, x, params_of(ignores_b, {}, torch.float64), wrt)
    got = STRATEGIES[strategy].run(problem)
    assert torch.equal(got.derivatives["b"], torch.zeros(5, 2, dtype=torch.float64))
    assert got.derivatives["b"].dtype == torch.float64  # torch.equal does not compare dtypes
    if "a" in wrt:  # and a column that depends on nothing at all is zero for a as well
        expected = torch.cat([x, torch.zeros_like(x)], dim=1)
        assert_close(got.derivatives["a"], expected, rtol=FD_RTOL, atol=1e-12)


# -- several outputs -------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ALL)
def test_softmax_derivatives_sum_to_zero(strategy: str, builtins: dict[str, Routine]) -> None:
    """sum_i p_i = 1 for every T, so the M = 3 derivatives of each sample sum to zero."""
    problem = problem_for(builtins["softmax"], 16, seed=4)
    got = STRATEGIES[strategy].run(problem)
    assert got.values.shape == got.derivatives["T"].shape == (16, 3)
    atol = 1e-9 if strategy == "finite-difference" else 1e-15
    assert_close(got.derivatives["T"].sum(dim=1), torch.zeros(16, dtype=torch.float64),
                 rtol=0, atol=atol)


# -- float32 -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BUILTINS)
@pytest.mark.parametrize("strategy", ALL)
def test_float32(strategy: str, name: str, builtins: dict[str, Routine]) -> None:
    """float32 against the float64 closed form. eps = 1.2e-7: AD through a few hundred
    operations with cancellation (logistic dN/dK, 200 RK4 steps) loses up to ~2e-5
    relative, so 1e-4 relative, floored at 1e-5 of the largest derivative. Finite
    differences are at best ~eps^(2/3) ~ 2.4e-5 of the output's scale, which is ~5e-3 of
    a small derivative: 1e-2 relative, floored at 1e-3 of the largest derivative."""
    if name == "gamma_survival" and strategy in FORWARD:
        pytest.skip("igammac has no forward-mode formula (tested in float64)")
    problem = problem_for(builtins[name], 8 if name == "logistic_rk4" else 16, torch.float32)
    got = STRATEGIES[strategy].run(problem)
    exact_values, exact = CLOSED_FORMS[name].expected(problem.inputs)
    assert got.values.dtype == torch.float32
    assert_close(got.values.double(), exact_values, rtol=1e-5, atol=1e-6)
    rtol, floor = (1e-2, 1e-3) if strategy == "finite-difference" else (1e-4, 1e-5)
    for p, d in exact.items():
        assert got.derivatives[p].dtype == torch.float32
        assert_close(got.derivatives[p].double(), d, rtol=rtol,
                     atol=floor * float(d.abs().max()))


# -- the forum example, verbatim -----------------------------------------------------------


@pytest.mark.parametrize("strategy", AD)
def test_forum_example(strategy: str, builtins: dict[str, Routine]) -> None:
    x = torch.arange(10.)
    C = -5.0
    problem = Problem(builtins["linear"], x[:, None], {"C": torch.tensor(C)}, ("C",))
    got = STRATEGIES[strategy].run(problem)
    assert torch.equal(got.values[:, 0], C * x)
    assert torch.equal(got.derivatives["C"][:, 0], torch.tensor([0., 1, 2, 3, 4, 5, 6, 7, 8, 9]))


def test_forum_example_finite_difference(builtins: dict[str, Routine]) -> None:
    x = torch.arange(10.)
    problem = Problem(builtins["linear"], x[:, None], {"C": torch.tensor(-5.0)}, ("C",))
    got = STRATEGIES["finite-difference"].run(problem)
    assert_close(got.derivatives["C"][:, 0], x, rtol=1e-3, atol=1e-3)  # float32 differences


@pytest.mark.parametrize("strategy", ["auto", *AD])
def test_forum_example_through_the_engine(strategy: str, builtins: dict[str, Routine]) -> None:
    x = torch.arange(10.).double()
    result = run_engine(builtins["linear"], x[:, None], {"C": -5.0}, strategy=strategy)
    assert result.strategy == ("forward" if strategy == "auto" else strategy)
    assert result.derivatives["C"][:, 0].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert result.values[:, 0].tolist() == [-5.0 * i for i in range(10)]


# -- finite differences at a bound -------------------------------------------------------------


def test_one_sided_differences_near_a_lower_bound(builtins: dict[str, Routine]) -> None:
    """K = 2e-6 is closer to its bound 0 than h = eps^(1/3) ~ 6e-6: the one-sided rule runs,
    and is as accurate as the central one."""
    r = builtins["logistic_growth"]
    x = torch.stack([torch.linspace(1, 10, 16), torch.linspace(0.5, 8, 16)], 1).double()
    params = {"r": 0.5, "K": 2e-6}
    problem = Problem(r, x, params_of(r, params, torch.float64), ("K", "r"))
    got = STRATEGIES["finite-difference"].run(problem)
    _, exact = CLOSED_FORMS["logistic_growth"].expected(x, params)
    for p in ("K", "r"):
        assert_close(got.derivatives[p], exact[p], rtol=FD_RTOL)


def test_vega_near_zero_volatility(builtins: dict[str, Routine]) -> None:
    """At the forward (S = K e^{-rT}) the price is S (2 N(sigma sqrt(T) / 2) - 1), smooth in
    sigma down to 0, and vega there is S sqrt(T) / sqrt(2 pi) as sigma -> 0."""
    r = builtins["black_scholes_call"]
    s = torch.linspace(80, 120, 8, dtype=torch.float64)
    t = torch.linspace(0.25, 2, 8, dtype=torch.float64)
    rate, sigma = 0.03, 1e-6
    x = torch.stack([s, s * torch.exp(rate * t), t], 1)
    problem = Problem(r, x, params_of(r, {"sigma": sigma, "r": rate}, torch.float64), ("sigma",))
    got = STRATEGIES["finite-difference"].run(problem)
    _, exact = CLOSED_FORMS["black_scholes_call"].expected(x, {"sigma": sigma, "r": rate})
    assert_close(got.derivatives["sigma"], exact["sigma"], rtol=FD_RTOL)


SEEN: list[float] = []


@routine(description="y = x exp(p) with p in [0, 1]; records every p it is evaluated at",
         params=[Param("p", 0.5, bounds=(0.0, 1.0))], inputs=["x"])
def bounded(x: Tensor, *, p: Tensor) -> Tensor:
    SEEN.append(float(p))
    return x * torch.exp(p)


@pytest.mark.parametrize("p", [0.0, 1e-7, 0.5, 1 - 1e-7, 1.0])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_differences_stay_inside_the_bounds(p: float, dtype: torch.dtype) -> None:
    x = torch.linspace(-2, 2, 5, dtype=dtype)[:, None]
    SEEN.clear()
    got = STRATEGIES["finite-difference"].run(
        Problem(bounded, x, {"p": torch.tensor(p, dtype=dtype)}, ("p",)))
    assert len(SEEN) == 3 and all(0.0 <= v <= 1.0 for v in SEEN), SEEN
    exact = x.double() * torch.exp(torch.tensor(float(torch.tensor(p, dtype=dtype))))
    rtol = FD_RTOL if dtype == torch.float64 else 1e-2
    assert_close(got.derivatives["p"].double(), exact, rtol=rtol, atol=1e-12)


# -- never under no_grad or inference_mode ----------------------------------------------------

MODES: list[tuple[bool, bool]] = []


@routine(description="y = a x; records the autograd modes it runs under",
         params=[Param("a", 1.5)], inputs=["x"])
def watched(x: Tensor, *, a: Tensor) -> Tensor:
    MODES.append((torch.is_grad_enabled(), torch.is_inference_mode_enabled()))
    return a * x


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_no_strategy_runs_without_autograd(strategy: str) -> None:
    x = torch.arange(4, dtype=torch.float64)[:, None]
    MODES.clear()
    got, _ = differentiate(Problem(watched, x, params_of(watched, {}, torch.float64), ("a",)),
                           strategy)
    assert_close(got.derivatives["a"], x, rtol=FD_RTOL, atol=1e-12)
    assert MODES and all(m == (True, False) for m in MODES), MODES
    MODES.clear()
    result = run_engine(watched, x, {}, strategy=strategy)
    assert_close(result.derivatives["a"], x, rtol=FD_RTOL, atol=1e-12)
    assert MODES and all(m == (True, False) for m in MODES), MODES


# -- per-sample parameters (coalesced requests) ------------------------------------------------


@pytest.mark.parametrize("strategy", [s for s in ALL if STRATEGIES[s].batchable])
def test_per_sample_parameters(strategy: str, builtins: dict[str, Routine]) -> None:
    """A batch of requests with different parameter values is one Problem with (N,)
    parameters: row i is differentiated at its own sigma and r."""
    r = builtins["black_scholes_call"]
    form = CLOSED_FORMS["black_scholes_call"]
    x = form.batch(12, seed=5)
    sigma = torch.linspace(0.1, 0.5, 12, dtype=torch.float64)
    rate = torch.full((12,), 0.03, dtype=torch.float64)
    rate[6:] = 0.05
    got = STRATEGIES[strategy].run(Problem(r, x, {"sigma": sigma, "r": rate}, ("sigma", "r")))
    for i in range(12):
        values, exact = form.expected(x[i:i + 1], {"sigma": float(sigma[i]), "r": float(rate[i])})
        assert_close(got.values[i:i + 1], values, rtol=AD_RTOL)
        for p in ("sigma", "r"):
            assert_close(got.derivatives[p][i:i + 1], exact[p], rtol=AD_RTOL)
