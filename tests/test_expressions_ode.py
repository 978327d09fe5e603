"""The ODE form: the logistic model integrated by RK4 as the logistic_rk4 routine does it,
Euler and RK4 against their closed forms, the time variable, and each refusal."""

from __future__ import annotations

import pytest
import torch

from app.engine.differentiation.differentiate import differentiate
from app.engine.differentiation.input_sensitivities import with_features_as_params
from app.engine.differentiation.strategies import Problem
from app.expressions import (
    Bounds,
    ExpressionError,
    Expressions,
    ExpressionTooLarge,
    OdeSpec,
    UnknownName,
)
from routines.population import RK4_STEPS, logistic_rk4

F64 = torch.float64
LOGISTIC = OdeSpec(
    rhs="r * n * (1 - n / K)", state="n", initial="N0", time="t", steps=RK4_STEPS, method="rk4"
)


@pytest.fixture(scope="module")
def expressions() -> Expressions:
    return Expressions()


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("order", "wrt"), [(1, ("r", "K", "N0", "t")), (2, ("r", "t"))])
def test_logistic_ode_reproduces_logistic_rk4(
    expressions: Expressions, order: int, wrt: tuple[str, ...]
) -> None:
    made = expressions.ode(LOGISTIC, ["N0", "t"], ["r", "K"])
    assert made.canonical == (
        "ode(rhs=r * n * (1 - n / K), state=n, initial=N0, time=t, steps=200, method=rk4)"
    )
    assert made.routine.outputs == ("n",)
    x = torch.tensor([[10.0, 1.0], [10.0, 2.5], [80.0, 7.0], [1.0, 30.0]], dtype=F64)
    params = {
        "r": torch.tensor([0.5, 0.3, 0.9, 0.2], dtype=F64),
        "K": torch.tensor(100.0, dtype=F64),
    }
    ours = with_features_as_params(Problem(made.routine, x, params, wrt))
    theirs = with_features_as_params(Problem(logistic_rk4, x, params, wrt))
    got, _ = differentiate(ours, "forward", order=order, cross=order == 2)
    want, _ = differentiate(theirs, "forward", order=order, cross=order == 2)
    _close(got.values, want.values)
    assert set(got.derivatives) == set(want.derivatives)
    for name, derivative in want.derivatives.items():
        _close(got.derivatives[name], derivative)


def test_reverse_mode_through_every_step(expressions: Expressions) -> None:
    made = expressions.ode(LOGISTIC, ["N0", "t"], ["r", "K"])
    x = torch.tensor([[10.0, 1.0], [20.0, 3.0]], dtype=F64)
    params = {"r": torch.tensor(0.5, dtype=F64), "K": torch.tensor(100.0, dtype=F64)}
    got, _ = differentiate(Problem(made.routine, x, params, ("r", "K")), "vmap-grad")
    want, _ = differentiate(Problem(logistic_rk4, x, params, ("r", "K")), "vmap-grad")
    for name in ("r", "K"):
        _close(got.derivatives[name], want.derivatives[name])


def test_euler_is_its_closed_form(expressions: Expressions) -> None:
    """dn/dt = -k n by Euler in s steps: n = N0 (1 - k T / s) ** s, dn/dk = -T n / (1 - kT/s)."""
    spec = OdeSpec(rhs="-k * n", state="n", initial="N0", time="T", steps=50, method="euler")
    made = expressions.ode(spec, ["N0", "T"], ["k"])
    x = torch.tensor([[2.0, 1.0], [3.0, 4.0]], dtype=F64)
    got, _ = differentiate(
        Problem(made.routine, x, {"k": torch.tensor(0.3, dtype=F64)}, ("k",)), "forward"
    )
    for i, (n0, t) in enumerate(x.tolist()):
        step = 1 - 0.3 * t / 50
        assert got.values[i, 0].item() == pytest.approx(n0 * step**50, rel=1e-13)
        assert got.derivatives["k"][i, 0].item() == pytest.approx(-t * n0 * step**49, rel=1e-12)


def test_the_time_name_is_the_current_time_inside_rhs(expressions: Expressions) -> None:
    """dn/dt = a t**3 from 2 N0: RK4 is exact for it, n(T) = 2 N0 + a T**4 / 4, and the end
    time may be a parameter."""
    spec = OdeSpec(rhs="a * T ** 3", state="n", initial="2 * N0", time="T", steps=7)
    made = expressions.ode(spec, ["N0"], ["a", "T"])
    x = torch.tensor([[1.0], [5.0]], dtype=F64)
    params = {"a": torch.tensor(0.5, dtype=F64), "T": torch.tensor([2.0, 3.0], dtype=F64)}
    got, _ = differentiate(Problem(made.routine, x, params, ("a", "T")), "forward")
    for i, (n0, t) in enumerate(zip([1.0, 5.0], [2.0, 3.0], strict=True)):
        assert got.values[i, 0].item() == pytest.approx(2 * n0 + 0.5 * t**4 / 4, rel=1e-13)
        assert got.derivatives["a"][i, 0].item() == pytest.approx(t**4 / 4, rel=1e-13)
        assert got.derivatives["T"][i, 0].item() == pytest.approx(0.5 * t**3, rel=1e-13)


def test_a_constant_rhs(expressions: Expressions) -> None:
    spec = OdeSpec(rhs="2", state="n", initial="1", time="t", steps=3, method="euler")
    made = expressions.ode(spec, ["t"], ["c"])
    x = torch.tensor([[1.5]], dtype=F64)
    got, _ = differentiate(
        with_features_as_params(
            Problem(made.routine, x, {"c": torch.tensor(1.0, dtype=F64)}, ("t",))
        ),
        "forward",
    )
    assert got.values.tolist() == [[4.0]]
    assert got.derivatives["t"].tolist() == [[2.0]]


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"state": "N0"}, ExpressionError, "ode.state: 'N0' must be an identifier that is neither"),
        ({"state": "pi"}, ExpressionError, "ode.state: 'pi'"),
        ({"state": "n m"}, ExpressionError, "ode.state: 'n m'"),
        ({"time": "s"}, ExpressionError, "ode.time: 's' must name an input or a parameter"),
        (
            {"method": "rk45"},
            ExpressionError,
            "ode.method: 'rk45' is not a method; use one of euler, rk4",
        ),
        ({"steps": 0}, ExpressionError, "ode.steps: 0 must be a positive integer"),
        ({"steps": True}, ExpressionError, "ode.steps: True must be a positive integer"),
        ({"steps": 2.5}, ExpressionError, "ode.steps: 2.5 must be a positive integer"),
        ({"steps": 10_001}, ExpressionTooLarge, "DYDC_EXPRESSION_MAX_ODE_STEPS"),
        ({"rhs": ["r"]}, ExpressionError, "ode.rhs: give a string"),
        ({"rhs": "r * m"}, UnknownName, "ode.rhs: unknown name 'm' at column 5"),
        ({"rhs": "r.n"}, ExpressionError, "ode.rhs: attribute access"),
        ({"initial": "n"}, UnknownName, "ode.initial: unknown name 'n'"),
        ({"initial": "N0" * 3000}, ExpressionTooLarge, "DYDC_EXPRESSION_MAX_CHARS"),
    ],
)
def test_refusals(
    expressions: Expressions, change: dict[str, object], error: type[ExpressionError], message: str
) -> None:
    spec = OdeSpec(**{**LOGISTIC.__dict__, **change})  # type: ignore[arg-type]
    with pytest.raises(error) as caught:
        expressions.ode(spec, ["N0", "t"], ["r", "K"])
    assert message in str(caught.value)
    assert type(caught.value) is error


def test_steps_bound_is_a_setting() -> None:
    made = Expressions(Bounds(max_ode_steps=10))
    with pytest.raises(ExpressionTooLarge, match="11 steps are more than 10"):
        made.ode(OdeSpec("r", "n", "N0", "t", steps=11), ["N0", "t"], ["r"])
    made.ode(OdeSpec("r", "n", "N0", "t", steps=10), ["N0", "t"], ["r"])
