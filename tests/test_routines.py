"""The built-in routines against their closed forms (tests/support/closed_forms.py), and the
registry that declares and finds them."""

from __future__ import annotations

import math
import sys
import textwrap
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import Tensor

import routines.population
from app.engine.differentiation.evaluation import evaluate_batch
from app.engine.differentiation.strategies import STRATEGIES, Problem
from routines import (
    ENTRY_POINT_GROUP,
    Param,
    Routine,
    RoutineDefinitionError,
    discover,
    routine,
)
from tests.support import AD_RTOL, BUILTINS, CLOSED_FORMS, assert_close, params_of, run_engine

with warnings.catch_warnings():
    # Forward-mode AD imports this module lazily on the first jvp, and the module calls the
    # deprecated torch.jit.script at import: under filterwarnings = error that first jvp
    # would fail in whichever test happens to run first. Import it once, quietly.
    warnings.simplefilter("ignore", DeprecationWarning)
    import torch._decomp.decompositions_for_jvp

# RK4 with 200 steps of h <= 0.05 has a global error ~ (r h)^4 ~ 4e-7 in relative terms at
# worst, ~2e-9 measured on this batch for values and derivatives alike; 1e-8 leaves a factor
# of five and is tight enough that 100 steps (16x the error) would fail it.
RK4_RTOL = 1e-8


@pytest.fixture(scope="module")
def builtins() -> dict[str, Routine]:
    return discover(builtins=True)


# -- each built-in routine against its closed form ---------------------------------------------


@pytest.mark.parametrize("name", BUILTINS)
def test_engine_matches_closed_form(name: str, builtins: dict[str, Routine]) -> None:
    form = CLOSED_FORMS[name]
    x = form.batch(64, seed=1)
    values, derivs = form.expected(x)
    rtol = RK4_RTOL if name == "logistic_rk4" else AD_RTOL

    result = run_engine(builtins[name], x, form.params)

    assert result.strategy == ("vmap-grad" if name == "gamma_survival" else "forward")
    assert_close(result.values, values, rtol=rtol)
    assert list(result.derivatives) == list(builtins[name].param_names)
    for p, d in derivs.items():
        assert_close(result.derivatives[p], d, rtol=rtol)

    evaluated = run_engine(builtins[name], x, form.params, strategy=None)
    assert_close(evaluated.values, values, rtol=rtol)
    assert evaluated.derivatives == {}


def test_black_scholes_greeks_are_textbook_scale(builtins: dict[str, Routine]) -> None:
    """Hull's example 15.6: S = 42, K = 40, T = 0.5, r = 0.1, sigma = 0.2 gives c = 4.76;
    vega ~ 8.8 per unit of sigma (0.088 per percentage point would be the other scale)."""
    x = torch.tensor([[42.0, 40.0, 0.5]], dtype=torch.float64)
    result = run_engine(builtins["black_scholes_call"], x, {"sigma": 0.2, "r": 0.1})
    assert result.values.item() == pytest.approx(4.76, abs=0.005)
    assert result.derivatives["sigma"].item() == pytest.approx(8.81, abs=0.01)
    assert result.derivatives["r"].item() == pytest.approx(13.98, abs=0.01)


@pytest.mark.parametrize("sigma", [1e154, 1e200, 1e300])
def test_black_scholes_at_a_huge_volatility_tends_to_the_spot(
        builtins: dict[str, Routine], sigma: float) -> None:
    """As sigma grows a call is worth S (N(d1) -> 1, N(d2) -> 0). sigma^2 overflows from
    about 1.3e154; written with it, d1 and d2 were both infinite and the price S - K e^(-rT),
    negative where K e^(-rT) > S."""
    x = torch.tensor([[49.0, 50.0, 0.3846], [80.0, 100.0, 2.0], [120.0, 100.0, 1.0]],
                     dtype=torch.float64)
    result = run_engine(builtins["black_scholes_call"], x, {"sigma": sigma, "r": 0.05})
    assert_close(result.values, x[:, :1], rtol=1e-12)
    assert torch.isfinite(result.derivatives["sigma"]).all()


def _call_greeks(S: float, K: float, T: float, sigma: float, r: float) -> dict[str, float]:
    """Price, delta, vega and rho from the closed forms, in Python floats, with N(x) as
    erfc(-x / sqrt 2) / 2, accurate in the far tails."""
    cdf = lambda x: 0.5 * math.erfc(-x / math.sqrt(2))  # noqa: E731
    vol = sigma * math.sqrt(T)
    d1 = (math.log(S / K) + r * T) / vol + 0.5 * vol
    d2 = d1 - vol
    strike = K * math.exp(-r * T)
    return {"price": S * cdf(d1) - strike * cdf(d2), "S": cdf(d1),
            "sigma": S * math.sqrt(T) * math.exp(-d1 * d1 / 2) / math.sqrt(2 * math.pi),
            "r": strike * T * cdf(d2)}


@pytest.mark.parametrize("row", [(100.0, 600.0, 1.0), (100.0, 300.0, 1.0), (50.0, 130.0, 0.25),
                                 (52.17626753211481, 116.64957189478459, 0.1488188133876009)])
def test_black_scholes_far_out_of_the_money(builtins: dict[str, Routine],
                                            row: tuple[float, float, float]) -> None:
    """Deep out of the money, N(d1) and N(d2) are 1e-10 to 1e-30: torch.special.ndtr gave 0
    below about -8.3 (2% off at -8), so prices came out negative and deltas of the wrong
    sign; every figure now matches the closed form to 1e-12 relative."""
    x = torch.tensor([row], dtype=torch.float64)
    result = run_engine(builtins["black_scholes_call"], x, {"sigma": 0.25, "r": 0.03},
                        wrt=("S", "sigma", "r"))
    expected = _call_greeks(*row, sigma=0.25, r=0.03)
    assert expected["price"] > 0
    assert result.values.item() == pytest.approx(expected["price"], rel=1e-12, abs=0)
    for name in ("S", "sigma", "r"):
        assert result.derivatives[name].item() == pytest.approx(expected[name], rel=1e-12, abs=0)


@pytest.mark.parametrize("strategy", ["forward", "vmap-grad", "jacfwd"])
def test_black_scholes_at_zero_volatility_is_the_discounted_intrinsic_value(
        builtins: dict[str, Routine], strategy: str) -> None:
    """sigma = 0 is within its bounds: the price is max(S - K e^(-rT), 0), and the
    derivatives are that function's: delta 1 or 0, rho K T e^(-rT) or 0, vega 0 away from the
    forward (the formula's 0/0 had put NaN in every one, wrt r included). T = 0 alike."""
    rows = [(100.0, 95.0, 0.5), (100.0, 105.0, 1.0), (100.0, 90.0, 0.0)]
    x = torch.tensor(rows, dtype=torch.float64)
    r = 0.03
    result = run_engine(builtins["black_scholes_call"], x, {"sigma": 0.0, "r": r},
                        strategy=strategy, wrt=("S", "sigma", "r"))
    for i, (S, K, T) in enumerate(rows):
        strike = K * math.exp(-r * T)
        itm = strike < S
        assert result.values[i].item() == pytest.approx(max(S - strike, 0.0), rel=1e-15)
        assert result.derivatives["S"][i].item() == (1.0 if itm else 0.0)
        assert result.derivatives["sigma"][i].item() == 0.0
        assert result.derivatives["r"][i].item() == pytest.approx(
            strike * T if itm else 0.0, rel=1e-15)


@pytest.mark.parametrize("strategy", ["forward", "vmap-grad", "jacfwd"])
def test_black_scholes_without_spread_has_the_formulas_limits(
        builtins: dict[str, Routine], strategy: str) -> None:
    """sigma sqrt(T) = 0: away from the forward the intrinsic value's derivatives (dy/dT at
    T = 0 was NaN in reverse mode: sqrt's infinite slope in the branch not taken); at the
    money forward the formula's limits as sigma -> 0+: delta 1/2, vega S sqrt(T)/sqrt(2 pi),
    rho and dy/dK half the intrinsic value's (delta had been 1 and vega 0)."""
    r = 0.03
    rows = [(100.0, 100.0 * math.exp(r * 2.0), 2.0),  # at the money forward, sigma = 0
            (100.0, 90.0, 0.0), (100.0, 110.0, 0.0), (100.0, 100.0, 0.0)]  # T = 0
    at_forward = 0
    for sigma in (0.0, 0.25):
        result = run_engine(builtins["black_scholes_call"], torch.tensor(rows, dtype=torch.float64),
                            {"sigma": sigma, "r": r}, strategy=strategy,
                            wrt=("S", "K", "T", "sigma", "r"))
        got = {k: v.reshape(-1).tolist() for k, v in result.derivatives.items()}
        for i, (S, K, T) in enumerate(rows):
            if T > 0 and sigma > 0:
                continue  # the formula itself (tested against QuantLib)
            discount = math.exp(-r * T)
            part = 0.5 if K * discount == S else 1.0 if K * discount < S else 0.0
            assert result.values[i].item() == pytest.approx(max(S - K * discount, 0), abs=1e-12)
            want = {"S": part, "K": -part * discount, "T": part * r * K * discount,
                    "r": part * K * T * discount,
                    "sigma": S * math.sqrt(T) / math.sqrt(2 * math.pi) if part == 0.5 else 0.0}
            for name, value in want.items():
                assert got[name][i] == pytest.approx(value, rel=1e-12, abs=1e-15), (i, name)
            at_forward += part == 0.5
    assert at_forward == 3  # rows 0 (sigma 0) and 3 (both): exactly at the forward


def test_logistic_rk4_error_is_integration_error(builtins: dict[str, Routine],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The RK4 tolerance is not loose: values and derivatives differ from the closed form by
    the same ~1e-9, and halving the step count multiplies both errors by ~2^4 = 16, as the
    global error of a fourth-order method must."""
    r = builtins["logistic_rk4"]
    form = CLOSED_FORMS["logistic_rk4"]
    x = form.batch(16, seed=2)
    values, derivs = form.expected(x)
    params = params_of(r, form.params, torch.float64)

    def worst_errors() -> list[float]:
        got = STRATEGIES["forward"].run(Problem(r, x, params, r.param_names))
        pairs = [(got.values, values)] + [(got.derivatives[p], derivs[p]) for p in derivs]
        return [float(((a - b).abs() / b.abs()).max()) for a, b in pairs]

    fine = worst_errors()
    assert all(1e-11 < e < RK4_RTOL for e in fine), fine
    monkeypatch.setattr(routines.population, "RK4_STEPS", routines.population.RK4_STEPS // 2)
    coarse = worst_errors()
    for f, c in zip(fine, coarse, strict=True):
        assert 10 < c / f < 24, (fine, coarse)


# -- a vectorized routine: whole-batch code that vmap cannot run -------------------------------


def _branch(x: Tensor, a: Tensor, b: Tensor) -> Tensor:
    return a * x**2 + b if x > 0 else b * torch.exp(a * x)


@routine(
    name="piecewise_loop",
    description="a x^2 + b for x > 0, else b exp(a x); a Python loop with a branch per sample.",
    params=[Param("a", 0.5), Param("b", 2.0)],
    inputs=["x"],
    vectorized=True,
)
def piecewise_loop(x: Tensor, *, a: Tensor, b: Tensor) -> Tensor:
    n = x.shape[0]
    a, b = a.expand(n), b.expand(n)  # shared 0-d, or one copy per sample
    return torch.stack([_branch(x[i], a[i], b[i]) for i in range(n)])


@routine(name="piecewise_sample", description="piecewise_loop, one sample at a time.",
         params=[Param("a", 0.5), Param("b", 2.0)], inputs=["x"])
def piecewise_sample(x: Tensor, *, a: Tensor, b: Tensor) -> Tensor:
    return _branch(x, a, b)


def test_piecewise_routine_cannot_be_vmapped() -> None:
    x = torch.linspace(-1, 1, 6, dtype=torch.float64)[:, None]
    params = params_of(piecewise_sample, {}, torch.float64)
    with pytest.raises(RuntimeError, match="data-dependent control flow"):
        evaluate_batch(piecewise_sample, x, params)


@pytest.mark.parametrize("strategy", ["forward", "forward-dual", "vmap-grad", "reverse-loop",
                                      "reverse-batched", "jacrev", "finite-difference"])
@pytest.mark.parametrize("wrt", [("a", "b"), ("b",)])
def test_vectorized_routine_under_strategy(strategy: str, wrt: tuple[str, ...]) -> None:
    x = torch.linspace(-2, 2, 9, dtype=torch.float64)[:, None]  # both branches, and x = 0
    a, b = 0.7, 1.5
    xs = x[:, 0]
    pos = xs > 0
    expected = {
        "a": torch.where(pos, xs**2, b * xs * torch.exp(a * xs)),
        "b": torch.where(pos, torch.ones_like(xs), torch.exp(a * xs)),
    }
    values = torch.where(pos, a * xs**2 + b, b * torch.exp(a * xs))
    params = params_of(piecewise_loop, {"a": a, "b": b}, torch.float64)

    got = STRATEGIES[strategy].run(Problem(piecewise_loop, x, params, wrt))

    rtol = 1e-5 if strategy == "finite-difference" else AD_RTOL
    assert_close(got.values, values[:, None], rtol=AD_RTOL)
    assert list(got.derivatives) == list(wrt)
    for p in wrt:
        assert_close(got.derivatives[p], expected[p][:, None], rtol=rtol, atol=1e-9)


# -- declaring routines ------------------------------------------------------------------------


def _one(x: Tensor, *, a: Tensor) -> Tensor:
    return a * x


@pytest.mark.parametrize("name", ["", "has space", "semi;colon", "slash/name", "dot.name"])
def test_bad_routine_names_are_refused(name: str) -> None:
    with pytest.raises(RoutineDefinitionError, match="routine name"):
        Routine(name=name, description="d", params=(Param("a", 1.0),), inputs=("x",),
                outputs=("y",), fn=_one)
    if name:  # the decorator reads an empty name as no name, and takes the function's
        with pytest.raises(RoutineDefinitionError, match="routine name"):
            routine(name=name, description="d", params=[Param("a", 1.0)], inputs=["x"])(_one)


def test_good_routine_names_and_defaults() -> None:
    r = routine(name="my-routine_2", description="d", params=[Param("a", 1.0)], inputs=["x"])(_one)
    assert (r.name, r.outputs, r.vectorized) == ("my-routine_2", ("y",), False)
    assert routine(description="d", params=[Param("a", 1.0)], inputs=["x"])(_one).name == "_one"


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Param("not an identifier", 1.0), "not an identifier"),
        (lambda: Param("1a", 1.0), "not an identifier"),
        (lambda: Param("a", float("nan")), "default must be finite"),
        (lambda: Param("a", float("inf")), "default must be finite"),
        (lambda: Param("a", -0.5, bounds=(0.0, None)), "outside"),
        (lambda: Param("a", 2.0, bounds=(None, 1.0)), "outside"),
        (lambda: Param("a", 1.5, bounds=(0.0, 1.0)), "outside"),
    ],
)
def test_bad_params_are_refused(make: Callable[[], Param], match: str) -> None:
    with pytest.raises(RoutineDefinitionError, match=match):
        make()


def test_default_on_a_bound_is_allowed() -> None:
    assert Param("a", 0.0, bounds=(0.0, 1.0)).bounds == (0.0, 1.0)


def _two(x: Tensor, z: Tensor, *, a: Tensor, b: Tensor) -> Tensor:
    return a * x + b * z


@pytest.mark.parametrize(
    ("fn", "params", "inputs", "outputs", "match"),
    [
        (_two, ["a", "a"], ["x", "z"], ["y"], "duplicate names in params"),
        (_two, ["a", "b"], ["x", "x"], ["y"], "duplicate names in inputs"),
        (_two, ["a", "b"], ["x", "z"], ["y", "y"], "duplicate names in outputs"),
        (_two, [], ["x", "z"], ["y"], "at least one parameter"),
        (_two, ["a", "b"], [], ["y"], "at least one input"),
        (_two, ["a", "b"], ["x", "z"], [], "at least one input and output"),
        # the signature does not match the declaration
        (_two, ["a", "b"], ["x"], ["y"], "must accept the 1 inputs"),
        (_two, ["a", "b"], ["x", "z", "w"], ["y"], "must accept the 3 inputs"),
        (_two, ["a"], ["x", "z"], ["y"], "parameters"),
        (_two, ["a", "c"], ["x", "z"], ["y"], "parameters"),
        (_one, ["a", "b"], ["x"], ["y"], "parameters"),
    ],
)
def test_inconsistent_declarations_are_refused(fn: Callable[..., Tensor], params: list[str],
                                               inputs: list[str], outputs: list[str],
                                               match: str) -> None:
    with pytest.raises(RoutineDefinitionError, match=match):
        routine(description="d", params=[Param(p, 1.0) for p in params], inputs=inputs,
                outputs=outputs)(fn)


def test_keyword_only_params_must_not_be_positional_inputs() -> None:
    def positional_param(x: Tensor, a: Tensor) -> Tensor:
        return a * x

    # the service passes parameters by keyword, so a positional-or-keyword one is accepted
    r = routine(description="d", params=[Param("a", 1.0)], inputs=["x"])(positional_param)
    assert r(torch.tensor(2.0), a=torch.tensor(3.0)).item() == 6.0


# -- finding routines --------------------------------------------------------------------------


def test_discover_finds_every_builtin(builtins: dict[str, Routine]) -> None:
    assert sorted(builtins) == BUILTINS
    assert list(builtins) == sorted(builtins)
    for name, r in builtins.items():
        assert isinstance(r, Routine) and r.name == name
        assert r.description and len(r.params) >= 1
    assert len(builtins["softmax"].outputs) == 3


@dataclass
class Plugin:
    """A third-party distribution on sys.path: modules plus a dist-info with entry points."""

    root: Path
    monkeypatch: pytest.MonkeyPatch
    modules: list[str]

    def install(self, modules: dict[str, str], entry_points: dict[str, str],
                dist: str = "dydc_plugin") -> None:
        for module, source in modules.items():
            (self.root / f"{module}.py").write_text(textwrap.dedent(source))
            self.modules.append(module)
        info = self.root / f"{dist}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        lines = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
        (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{lines}\n")
        self.monkeypatch.syspath_prepend(str(self.root))


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Plugin]:
    p = Plugin(tmp_path, monkeypatch, [])
    yield p
    for module in p.modules:
        sys.modules.pop(module, None)


PLUGIN_SOURCE = """
    from routines import Param, routine

    @routine(description="a x^2", params=[Param("a", 1.0)], inputs=["x"])
    def square(x, *, a):
        return a * x * x

    @routine(description="a x^3", params=[Param("a", 1.0)], inputs=["x"])
    def cube(x, *, a):
        return a * x ** 3

    BOTH = [square, cube]
    NOT_A_ROUTINE = 42
    NOT_ALL_ROUTINES = [square, 42]
"""


def test_entry_point_to_a_routine(plugin: Plugin) -> None:
    plugin.install({"dydc_plugin_a": PLUGIN_SOURCE}, {"sq": "dydc_plugin_a:square"})
    found = discover()
    assert sorted(found) == sorted([*BUILTINS, "square"])
    assert found["square"](torch.tensor(3.0), a=torch.tensor(2.0)).item() == 18.0


@pytest.mark.parametrize("target", ["dydc_plugin_b", "dydc_plugin_b:BOTH"])
def test_entry_point_to_a_module_or_a_list(plugin: Plugin, target: str) -> None:
    plugin.install({"dydc_plugin_b": PLUGIN_SOURCE}, {"mine": target})
    assert sorted(set(discover()) - set(BUILTINS)) == ["cube", "square"]
    assert sorted(discover(builtins=False)) == ["cube", "square"]


def test_one_routine_reached_twice_is_not_a_clash(plugin: Plugin) -> None:
    plugin.install({"dydc_plugin_c": PLUGIN_SOURCE},
                   {"one": "dydc_plugin_c:square", "all": "dydc_plugin_c"})
    assert sorted(discover(builtins=False)) == ["cube", "square"]


def test_a_plugin_routine_can_be_differentiated(plugin: Plugin) -> None:
    plugin.install({"dydc_plugin_d": PLUGIN_SOURCE}, {"sq": "dydc_plugin_d:square"})
    square = discover(builtins=False)["square"]
    x = torch.arange(4.0, dtype=torch.float64)[:, None]
    got = STRATEGIES["forward"].run(Problem(square, x, {"a": torch.tensor(2.0,
                                                                     dtype=torch.float64)},
                                            ("a",)))
    assert torch.equal(got.derivatives["a"], x**2)


def test_same_name_in_a_plugin_and_the_builtins_is_an_error(plugin: Plugin) -> None:
    plugin.install({"dydc_plugin_e": """
        from routines import Param, routine

        @routine(description="a clash", params=[Param("C", 1.0)], inputs=["x"])
        def linear(x, *, C):
            return C + x
    """}, {"clash": "dydc_plugin_e:linear"})
    with pytest.raises(RoutineDefinitionError,
                       match=r"'linear' is declared twice: in routines.elementary and entry "
                             r"point clash"):
        discover()
    assert list(discover(builtins=False)) == ["linear"]


def test_same_name_in_two_plugins_is_an_error(plugin: Plugin) -> None:
    plugin.install({"dydc_plugin_f": PLUGIN_SOURCE, "dydc_plugin_g": PLUGIN_SOURCE},
                   {"f": "dydc_plugin_f:square", "g": "dydc_plugin_g:square"})
    with pytest.raises(RoutineDefinitionError, match="'square' is declared twice"):
        discover(builtins=False)


@pytest.mark.parametrize(
    ("target", "match"),
    [
        ("dydc_plugin_h:NOT_A_ROUTINE", "neither a Routine, a module nor a list"),
        ("dydc_plugin_h:NOT_ALL_ROUTINES", "42 is not a Routine"),
        ("dydc_plugin_h:missing", "entry point bad"),
        ("dydc_no_such_module_anywhere:thing", "entry point bad .*No module named"),
    ],
)
def test_broken_entry_points_are_errors(plugin: Plugin, target: str, match: str) -> None:
    plugin.install({"dydc_plugin_h": PLUGIN_SOURCE}, {"bad": target})
    with pytest.raises(RoutineDefinitionError, match=match):
        discover()


def test_entry_points_are_read_from_the_group(monkeypatch: pytest.MonkeyPatch) -> None:
    """The group name is the one the README documents; monkeypatched, no dist-info needed."""
    import importlib.metadata

    asked: list[str] = []

    def entry_points(*, group: str) -> list[importlib.metadata.EntryPoint]:
        asked.append(group)
        return [importlib.metadata.EntryPoint("lin", "routines.elementary:linear", group)]

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    assert list(discover(builtins=False)) == ["linear"]
    assert sorted(discover()) == BUILTINS  # the builtin itself again: no clash
    assert asked == ["dydc.routines", "dydc.routines"] == [ENTRY_POINT_GROUP] * 2
