"""``Client.expression``, ``AsyncClient.expression`` and ``dydc expression`` against a live
service (uvicorn in this process): closed forms, the ODE form, per-sample parameters, and
refusals as the client's errors and the command line's one-line exit 1 (2 for usage)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import dydc
import numpy as np
import pytest
from dydc.cli import app
from typer.testing import CliRunner

from tests.support import closed_forms as cf

LOGISTIC = "K / (1 + (K - N0) / N0 * exp(-r * t))"
ODE = {"rhs": "r * n * (1 - n / K)", "state": "n", "initial": "N0", "time": "t", "steps": 200}
N0 = np.array([10.0, 10.0, 50.0, 3.0])
T = np.array([1.0, 2.5, 0.3, 7.0])

runner = CliRunner()


def test_client_expression_by_columns(small_dydc_url: str) -> None:
    with dydc.Client(small_dydc_url) as client:
        r = client.expression(LOGISTIC, {"N0": N0, "t": T}, {"r": 0.5, "K": 100.0}, "r,K", order=2)
        ev = client.expression(
            "K/(1+(K-N0)/N0*exp(-r*t))",
            np.stack([N0, T], axis=1),
            {"r": 0.5, "K": 100.0},
            names=["N0", "t"],
            evaluate=True,
        )
    assert r.expression == ev.expression == LOGISTIC
    assert r.strategy is not None and ev.strategy is None
    np.testing.assert_array_equal(r.values, ev.values)
    for i, (n0, t) in enumerate(zip(N0, T, strict=True)):
        want = cf.logistic_growth(n0, t, 0.5, 100.0)
        assert r.values[i] == pytest.approx(want["y"], rel=1e-13)
        assert r.derivatives["r"][i] == pytest.approx(want["r"], rel=1e-12)
        assert r.derivatives["K"][i] == pytest.approx(want["K"], rel=1e-12)
        assert r.second_derivatives["r,r"][i] == pytest.approx(want["r,r"], rel=1e-10)


def test_client_ode_matches_the_routine(small_dydc_url: str) -> None:
    rates = np.array([0.5, 0.2, 1.0, 0.05])
    x = np.stack([N0, T], axis=1)
    with dydc.Client(small_dydc_url) as client:
        got = client.expression(
            None, x, {"r": rates, "K": 100.0}, ["r", "K"], names="N0,t", ode=ODE
        )
        want = client.sensitivities("logistic_rk4", x, {"r": rates, "K": 100.0}, ["r", "K"])
    assert got.outputs == ["n"]
    np.testing.assert_allclose(got.values, want.values, rtol=1e-12)
    for key in ("r", "K"):
        np.testing.assert_allclose(got.derivatives[key], want.derivatives[key], rtol=1e-12)


@pytest.mark.anyio
async def test_async_client_expression(small_dydc_url: str) -> None:
    async with dydc.AsyncClient(small_dydc_url) as client:
        r = await client.expression(
            "a * x ** 2", {"x": [1.0, 2.0, 3.0]}, {"a": 3.0}, wrt=["a", "x"]
        )
    np.testing.assert_array_equal(r.values, [3.0, 12.0, 27.0])
    np.testing.assert_array_equal(r.derivatives["a"], [1.0, 4.0, 9.0])
    np.testing.assert_array_equal(r.derivatives["x"], [6.0, 12.0, 18.0])


def test_client_refusals(small_dydc_url: str) -> None:
    with dydc.Client(small_dydc_url) as client:
        with pytest.raises(dydc.InvalidRequest, match="column 5"):
            client.expression("a * x.__class__", {"x": [1.0]}, {"a": 1.0})
        with pytest.raises(dydc.InvalidRequest, match="declared: a, x"):
            client.expression("a * y", {"x": [1.0]}, {"a": 1.0})
        with pytest.raises(ValueError, match="name the input features"):
            client.expression("a * x", [1.0, 2.0], {"a": 1.0})
        with pytest.raises(ValueError, match="not both"):
            client.expression("a * x", {"x": [1.0]}, {"a": 1.0}, ode=ODE)


def _cli(url: str, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["--url", url, *args])
    return result.exit_code, result.stdout, result.stderr


def test_cli_expression_csv_in_csv_out(small_dydc_url: str, tmp_path: Path) -> None:
    source = tmp_path / "data.csv"
    with source.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["x", "scale"])
        writer.writerows([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]])
    code, out, err = _cli(
        small_dydc_url,
        "expression",
        "C * x + D",
        "--inputs",
        str(source),
        "--param",
        "C=2",
        "--param",
        "D=@scale",
        "--wrt",
        "C,D,x",
        "--out",
        "-",
    )
    assert code == 0, err
    rows = list(csv.reader(io.StringIO(out)))
    # scale, which D was read from, is kept: the file reads back as --inputs (--names x)
    assert rows[0] == ["x", "scale", "y", "dy_dC", "dy_dD", "dy_dx"]
    table = np.asarray(rows[1:], dtype=np.float64)
    np.testing.assert_array_equal(table[:, 1], [10.0, 20.0, 30.0])
    np.testing.assert_array_equal(table[:, 2], [12.0, 24.0, 36.0])
    np.testing.assert_array_equal(table[:, 3], [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(table[:, 4], [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(table[:, 5], [2.0, 2.0, 2.0])


def test_cli_expression_table_and_ode(small_dydc_url: str, tmp_path: Path) -> None:
    source = tmp_path / "growth.csv"
    source.write_text("N0,t\n10,1.0\n10,2.5\n")
    code, out, err = _cli(
        small_dydc_url,
        "expression",
        "C * x",
        "--inputs",
        str(source),
        "--param",
        "C=2",
        "--names",
        "x,t",
    )
    assert code == 1 and "x" in err and "'C'" not in err, err  # x is no column of the file
    code, out, err = _cli(
        small_dydc_url,
        "expression",
        "--ode",
        json.dumps(ODE),
        "--inputs",
        str(source),
        "--param",
        "r=0.5",
        "--param",
        "K=100",
    )
    assert code == 0, err
    assert "expression: ode(rhs=r * n * (1 - n / K)" in out
    assert "expression-" not in out  # the table's title is the canonical text, not its hash
    assert "15.4828099" in out and "27.94433243" in out
    code, _, err = _cli(small_dydc_url, "expression", "--inputs", str(source))
    assert code == 2 and "EXPRESSION" in err
    code, _, err = _cli(small_dydc_url, "expression", "r * N0 ** t", "--inputs", str(source),
                        "--param", "r=0.5", "--evaluate", "--order", "2", "--check")
    assert code == 2 and err.startswith("error: --order, --check: --evaluate asks for values")
    code, _, err = _cli(small_dydc_url, "expression", "--ode", "{", "--inputs", str(source))
    assert code == 2 and "--ode is not JSON" in err
    code, out, err = _cli(
        small_dydc_url,
        "expression",
        "r * N0 ** t",
        "--inputs",
        str(source),
        "--param",
        "r=0.5",
        "--evaluate",
        "--out",
        "-",
    )
    assert code == 0, err
    assert list(csv.reader(io.StringIO(out))) == [
        ["N0", "t", "y"],
        ["10.0", "1.0", "5.0"],
        ["10.0", "2.5", str(0.5 * 10**2.5)],
    ]


def test_a_large_batch_is_split_under_the_services_limits(small_dydc_url: str) -> None:
    """250 samples with a per-sample rate, against a service taking 100 samples (and 16 KiB)
    a request: several chunks, each answer in place, the canonical text kept; several outputs
    and a comparison too (a comparison is never split: one request, refused whole)."""
    rng = np.random.default_rng(7)
    n0, t = rng.uniform(1.0, 90.0, 250), rng.uniform(0.0, 8.0, 250)
    rates = rng.uniform(0.1, 1.0, 250)
    with dydc.Client(small_dydc_url) as client:
        limits = client.limits()
        r = client.expression(LOGISTIC, {"N0": n0, "t": t}, {"r": rates, "K": 120.0}, "r,K")
        two = client.expression(["a * x", "b * x ** 2"], {"x": t}, {"a": 2.0, "b": 3.0},
                                order=2, cross=True)
    assert limits.max_samples == 100 and r.chunks >= 3 and two.chunks >= 3
    assert r.n == 250 and r.expression == "K / (1 + (K - N0) / N0 * exp(-r * t))"
    want = [cf.logistic_growth(a, b, c, 120.0) for a, b, c in zip(n0, t, rates, strict=True)]
    np.testing.assert_allclose(r.values, [w["y"] for w in want], rtol=1e-13)
    np.testing.assert_allclose(r.derivatives["r"], [w["r"] for w in want], rtol=1e-12)
    np.testing.assert_allclose(r.derivatives["K"], [w["K"] for w in want], rtol=1e-12)
    np.testing.assert_allclose(r.params["r"], rates, rtol=0)
    np.testing.assert_allclose(two.values, np.stack([2.0 * t, 3.0 * t**2], axis=1), rtol=1e-15)
    np.testing.assert_allclose(two.second_derivatives["b,b"], 0.0, atol=0)


def test_cli_the_issues_expression_example(small_dydc_url: str, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """``dydc expression "C * x" --inputs data.csv --param C=2``, as the issue writes it."""
    (tmp_path / "data.csv").write_text("x\n1.5\n-2.0\n4.0\n")
    monkeypatch.chdir(tmp_path)
    code, out, err = _cli(small_dydc_url, "expression", "C * x", "--inputs", "data.csv",
                          "--param", "C=2")
    assert code == 0, err
    assert out.startswith("expression: C * x\n")
    for x in (1.5, -2.0, 4.0):  # the value 2x and dy/dC = x on each row
        assert f"{2 * x:.10g}" in out and f"{x:.10g}" in out
