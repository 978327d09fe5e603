"""``Client.scenarios``, ``AsyncClient.scenarios`` and ``dydc scenarios`` against a live service
(uvicorn in this process, DYDC_MAX_SAMPLES = 100): the arrays against the service's own JSON
and Black-Scholes in closed form, the three ways to write scenarios, several outputs, the
P&L table and its CSV, retries, and refusals as the client's errors and the command line's
exit 1 (2 for a malformed option)."""

from __future__ import annotations

import csv
import io
import itertools
import json
from pathlib import Path
from typing import Any

import dydc
import httpx
import numpy as np
import pytest
from dydc.cli import app
from typer.testing import CliRunner

from tests.support import closed_forms as cf

ROUTINE = "black_scholes_call"
BOOK = np.array([[49.0, 50.0, 0.3846], [100.0, 95.0, 0.5], [80.0, 100.0, 2.0],
                 [120.0, 100.0, 1.0]])
BASE = {"sigma": 0.2, "r": 0.05}
GRID = {"sigma": ("relative", [-0.1, 0.0, 0.1]), "r": ("absolute", [-0.01, 0.01])}

runner = CliRunner()


def price(sigma: float, r: float, book: np.ndarray = BOOK) -> np.ndarray:
    return np.array([cf.black_scholes_greeks(s, k, t, sigma, r)["price"] for s, k, t in book])


def test_a_grid_matches_the_service_and_the_closed_form(small_dydc_url: str) -> None:
    with dydc.Client(small_dydc_url) as client:
        r = client.scenarios(ROUTINE, BOOK, BASE, GRID, explain=True, order=2, cross=True)
    body = {"inputs": BOOK.tolist(), "params": BASE, "explain": True, "order": 2,
            "cross": True,
            "scenarios": {"shifts": {"sigma": {"type": "relative", "values": [-0.1, 0, 0.1]},
                                     "r": {"type": "absolute", "values": [-0.01, 0.01]}},
                          "combine": "product"}}
    doc = httpx.post(f"{small_dydc_url}/v1/routines/{ROUTINE}/scenarios", json=body).json()
    assert r.values.shape == r.pnl.shape == r.delta_pnl.shape == (6, 4)  # type: ignore[union-attr]
    assert r.base.shape == (4,) and r.total_pnl.shape == (6,) and r.scenario_count == 6
    np.testing.assert_array_equal(r.base, doc["base"])
    for key in ("values", "pnl", "delta_pnl", "gamma_pnl", "unexplained"):
        np.testing.assert_array_equal(getattr(r, key), [s[key] for s in doc["scenarios"]])
    np.testing.assert_array_equal(r.total_pnl, doc["total_pnl"])
    assert r.wrt == ["sigma", "r"] and r.order == 2
    assert set(r.second_derivatives) == {"sigma,sigma", "sigma,r", "r,r"}
    np.testing.assert_allclose(r.base, price(0.2, 0.05), rtol=1e-12)
    for s, (rel, dr) in enumerate(itertools.product([-0.1, 0.0, 0.1], [-0.01, 0.01])):
        assert r.shifts[s] == pytest.approx({"sigma": 0.2 * rel, "r": dr}, abs=1e-15)
        np.testing.assert_allclose(r.values[s], price(0.2 * (1 + rel), 0.05 + dr), rtol=1e-12)
    np.testing.assert_allclose(r.total_pnl, r.pnl.sum(axis=1), rtol=1e-12)
    np.testing.assert_allclose(r.unexplained, r.pnl - r.delta_pnl - r.gamma_pnl,  # type: ignore[operator]
                               atol=1e-13)
    columns, rows = r.table()
    assert columns == ["scenario", "sigma:rel", "r:abs", "total_pnl", "total_delta_pnl",
                       "total_gamma_pnl", "total_unexplained"]
    assert [row[:3] for row in rows] == [
        [s, rel, dr] for s, (rel, dr) in enumerate(itertools.product([-0.1, 0.0, 0.1],
                                                                     [-0.01, 0.01]))]
    assert [row[3] for row in rows] == r.total_pnl.tolist()
    assert [row[6] for row in rows] == r.total_unexplained.tolist()  # type: ignore[union-attr]


def test_zip_list_and_columns_by_name(small_dydc_url: str) -> None:
    columns = {"S": BOOK[:, 0], "K": BOOK[:, 1], "T": BOOK[:, 2]}
    with dydc.Client(small_dydc_url) as client:
        zipped = client.scenarios(
            ROUTINE, columns, BASE,
            {"sigma": {"type": "absolute", "values": [0.01, 0.02]}, "r": ("abs", [-0.005, 0])},
            combine="zip")
        listed = client.scenarios(ROUTINE, BOOK, BASE,
                                  scenario_list=[{"sigma": 0.01, "r": -0.005}, {"sigma": 0.02}])
        one = client.scenarios(ROUTINE, BOOK, BASE, {"r": ("absolute", 0.01)})
    for r in (zipped, listed):
        assert r.scenario_count == 2 and r.delta_pnl is None and r.wrt is None
        np.testing.assert_allclose(r.values[0], price(0.21, 0.045), rtol=1e-12)
        np.testing.assert_allclose(r.values[1], price(0.22, 0.05), rtol=1e-12)
    assert zipped.table()[0] == ["scenario", "sigma:abs", "r:abs", "total_pnl"]
    assert listed.table()[1][1] == [1, 0.02, 0.0, listed.total_pnl[1]]
    np.testing.assert_array_equal(listed.values, zipped.values)
    assert one.scenario_count == 1
    np.testing.assert_allclose(one.values[0], price(0.2, 0.06), rtol=1e-12)


def test_an_input_feature_and_several_outputs(small_dydc_url: str) -> None:
    z = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]])
    with dydc.Client(small_dydc_url) as client:
        spot = client.scenarios(ROUTINE, BOOK, BASE, {"S": ("relative", [-0.2, 0.2])},
                                explain=True)
        soft = client.scenarios("softmax", z, {"T": 1.0}, {"T": ("relative", [-0.5, 1.0])},
                                explain=True)
    np.testing.assert_allclose(spot.shifts[1]["S"], 0.2 * BOOK[:, 0], rtol=1e-15)
    moved = BOOK * [1.2, 1, 1]
    np.testing.assert_allclose(spot.values[1], price(0.2, 0.05, moved), rtol=1e-12)
    assert spot.table()[0][:2] == ["scenario", "S:rel"] and spot.table()[1][1][1] == 0.2
    assert spot.wrt == ["S"] and spot.order == 1
    assert soft.values.shape == soft.pnl.shape == soft.unexplained.shape == (2, 2, 3)  # type: ignore[union-attr]
    assert soft.base.shape == (2, 3) and soft.total_pnl.shape == (2, 3)
    for s, t in enumerate([0.5, 2.0]):
        e = np.exp(z / t)
        np.testing.assert_allclose(soft.values[s], e / e.sum(axis=1, keepdims=True), rtol=1e-12)
    columns, rows = soft.table()
    assert columns[:5] == ["scenario", "T:rel", "total_pnl[p1]", "total_pnl[p2]",
                           "total_pnl[p3]"]
    assert rows[1][2:5] == soft.total_pnl[1].tolist()


@pytest.mark.anyio
async def test_async_client_scenarios(small_dydc_url: str) -> None:
    x = np.array([0.5, -1.0, 2.0])
    async with dydc.AsyncClient(small_dydc_url) as client:
        r = await client.scenarios("linear", x, {"C": 1.5}, {"C": ("absolute", [-2.0, 3.0])},
                                   explain=True)
    np.testing.assert_array_equal(r.pnl, [-2.0 * x, 3.0 * x])
    np.testing.assert_array_equal(r.delta_pnl, [-2.0 * x, 3.0 * x])  # type: ignore[arg-type]
    assert np.abs(r.unexplained).max() <= 1e-13  # type: ignore[arg-type]


def test_refusals(small_dydc_url: str) -> None:
    with dydc.Client(small_dydc_url) as client:
        with pytest.raises(dydc.InvalidRequest, match="neither a parameter nor an input") as e:
            client.scenarios(ROUTINE, BOOK, BASE, {"vol": ("relative", [0.1])})
        assert e.value.status == 422
        with pytest.raises(dydc.InvalidRequest, match="sigma has 2, r has 1"):
            client.scenarios(ROUTINE, BOOK, BASE,
                             {"sigma": ("absolute", [0.1, 0.2]), "r": ("absolute", [0.0])},
                             combine="zip")
        with pytest.raises(dydc.InvalidRequest, match="DYDC_MAX_SAMPLES"):  # 30 x 4 > 100
            client.scenarios(ROUTINE, BOOK, BASE, {"sigma": ("absolute", [0.001] * 30)})
        with pytest.raises(dydc.InvalidRequest, match="scenario 0 moves sigma of sample 0"):
            client.scenarios(ROUTINE, BOOK, BASE, {"sigma": ("absolute", [-0.5])})
        with pytest.raises(dydc.InvalidRequest, match=r"scenarios.list\[1\] shifts nothing"):
            client.scenarios(ROUTINE, BOOK, BASE, scenario_list=[{"r": 0.01}, {}])
        for bad, message in [
            ({"shifts": GRID, "scenario_list": [{"r": 0.01}]}, "not both"),
            ({}, "not neither"),
            ({"shifts": {"r": ("percent", [1.0])}}, "use absolute or relative"),
            ({"shifts": {"r": [0.01, 0.02, 0.03]}}, "write"),
            ({"shifts": {"r": {"type": "absolute"}}}, "'values'"),
            ({"shifts": {"r": ("absolute", [])}}, "non-empty"),
            ({"shifts": GRID, "combine": "grid"}, "use product or zip"),
            ({"shifts": GRID, "order": 2}, "pass explain=True"),
            ({"shifts": {"r": ("absolute", [0.01, float("nan")])}},
             r"shifts\['r'\]\[1\] is nan; shifts must be finite numbers"),
            ({"shifts": {"r": {"type": "rel", "values": float("-inf")}}}, "is -inf"),
            ({"scenario_list": [{"r": 0.01}, {"sigma": float("inf")}]},
             r"scenario_list\[1\]\['sigma'\] is inf; shifts must be finite numbers"),
        ]:
            with pytest.raises(ValueError, match=message):
                client.scenarios(ROUTINE, BOOK, BASE, **bad)


def test_a_503_is_retried() -> None:
    answer: dict[str, Any] = {"routine": "linear", "dtype": "float64", "device": "cpu", "n": 2,
                              "params": {"C": 1.0}, "outputs": ["y"], "scenario_count": 1,
                              "base": [1.0, 2.0], "total_pnl": [0.3],
                              "scenarios": [{"shifts": {"C": 0.1}, "values": [1.1, 2.2],
                                             "pnl": [0.1, 0.2], "total_pnl": 0.3}]}
    sent: list[httpx.Request] = []

    def stub(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        if len(sent) == 1:
            return httpx.Response(503, json={"detail": "busy"}, headers={"Retry-After": "0"})
        return httpx.Response(200, json=answer)

    with dydc.Client("http://stub", transport=httpx.MockTransport(stub), backoff=0.0) as client:
        r = client.scenarios("linear", [1.0, 2.0], {"C": 1.0}, {"C": ("absolute", [0.1])})
    assert [q.url.path for q in sent] == ["/v1/routines/linear/scenarios"] * 2
    assert json.loads(sent[0].content)["scenarios"] == {
        "shifts": {"C": {"type": "absolute", "values": [0.1]}}, "combine": "product"}
    np.testing.assert_array_equal(r.pnl, [[0.1, 0.2]])
    assert r.table() == (["scenario", "C:abs", "total_pnl"], [[0, 0.1, 0.3]])


def _cli(url: str, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["--url", url, *args])
    return result.exit_code, result.stdout, result.stderr


def _book(tmp_path: Path) -> Path:
    source = tmp_path / "book.csv"
    with source.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "S", "K", "T"])
        writer.writerows([i, *row] for i, row in enumerate(BOOK.tolist()))
    return source


def test_cli_scenarios_to_csv_and_table(small_dydc_url: str, tmp_path: Path) -> None:
    source, target = _book(tmp_path), tmp_path / "pnl.csv"
    args = ["scenarios", ROUTINE, "--inputs", str(source), "--param", "sigma=0.2", "--param",
            "r=0.05", "--shift", "sigma=rel:-0.1,0,0.1", "--shift", "r=abs:-0.01,0.01"]
    code, _, err = _cli(small_dydc_url, *args, "--explain", "--order", "2", "--cross",
                        "--out", str(target))
    assert code == 0, err
    rows = list(csv.reader(io.StringIO(target.read_text())))
    with dydc.Client(small_dydc_url) as client:
        want = client.scenarios(ROUTINE, BOOK, BASE, GRID, explain=True, order=2, cross=True)
    assert rows[0] == want.table()[0]
    assert [[float(v) for v in row] for row in rows[1:]] == want.table()[1]
    code, out, err = _cli(small_dydc_url, *args, "--combine", "zip", "--shift",
                          "S=abs:1,2", "--out", "-")
    assert code == 1 and "zip" in err, err  # sigma has 3 shifts, r and S 2
    code, out, err = _cli(small_dydc_url, *args[:-4], "--shift", "r=abs:0.01")
    assert code == 0, err
    assert "1 scenarios x" in out and "4 samples" in out and "0.01" in out
    total = float(price(0.2, 0.06).sum() - price(0.2, 0.05).sum())
    assert f"{total:.10g}" in out


@pytest.mark.parametrize("shift", ["sigma", "sigma=0.1", "sigma=pct:0.1", "=rel:0.1",
                                   "sigma=rel:", "sigma=rel:0.1,x", "sigma=rel:nan",
                                   "sigma=abs:0.1,inf"])
def test_cli_bad_shift_is_a_usage_error(small_dydc_url: str, tmp_path: Path,
                                        shift: str) -> None:
    code, _, err = _cli(small_dydc_url, "scenarios", ROUTINE, "--inputs", str(_book(tmp_path)),
                        "--shift", shift)
    assert code == 2 and "--shift" in err, err


def test_cli_other_usage_errors(small_dydc_url: str, tmp_path: Path) -> None:
    source = str(_book(tmp_path))
    for extra, message in [([], "--shift: give at least one"),
                           (["--shift", "r=abs:0.1", "--shift", "r=rel:0.1"], "twice"),
                           (["--shift", "r=abs:0.1", "--combine", "grid"], "--combine"),
                           (["--shift", "r=abs:0.1", "--order", "2"], "add --explain")]:
        code, _, err = _cli(small_dydc_url, "scenarios", ROUTINE, "--inputs", source, *extra)
        assert code == 2 and message in err, (extra, err)
    code, _, err = _cli(small_dydc_url, "scenarios", ROUTINE, "--inputs", source, "--shift",
                        "vol=rel:0.1")
    assert code == 1 and "neither a parameter nor an input" in err, err


def test_cli_the_issues_example_and_totals_only(small_dydc_url: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """``dydc scenarios black_scholes_call --inputs book.csv --shift sigma=rel:-0.1,0,0.1
    --shift r=abs:-0.01,0.01 --explain --out pnl.csv`` as written (the routine's default
    sigma and r), and --totals-only writing the same table."""
    _book(tmp_path)
    monkeypatch.chdir(tmp_path)
    args = ["scenarios", ROUTINE, "--inputs", "book.csv", "--shift", "sigma=rel:-0.1,0,0.1",
            "--shift", "r=abs:-0.01,0.01", "--explain"]
    code, _, err = _cli(small_dydc_url, *args, "--out", "pnl.csv")
    assert code == 0, err
    rows = list(csv.reader(io.StringIO((tmp_path / "pnl.csv").read_text())))
    with dydc.Client(small_dydc_url) as client:
        defaults = {p.name: p.default for p in client.routine(ROUTINE).params}
        want = client.scenarios(ROUTINE, BOOK, None, GRID, explain=True)
    assert rows[0] == ["scenario", "sigma:rel", "r:abs", "total_pnl", "total_delta_pnl",
                       "total_unexplained"] == want.table()[0]
    table = np.asarray(rows[1:], dtype=np.float64)
    np.testing.assert_array_equal(table, want.table()[1])
    sigma, r = defaults["sigma"], defaults["r"]
    for row, (rel, dr) in zip(table, itertools.product([-0.1, 0.0, 0.1], [-0.01, 0.01]),
                              strict=True):
        total = price(sigma * (1 + rel), r + dr).sum() - price(sigma, r).sum()
        assert row[3] == pytest.approx(total, rel=1e-12, abs=1e-12)
    asked: list[bool] = []  # what each request asked for: totals only, or every array
    sending = dydc.scenarios.call

    def call(*args: Any, **kwargs: Any) -> Any:
        asked.append(args[3].totals_only)
        return sending(*args, **kwargs)

    monkeypatch.setattr(dydc.scenarios, "call", call)
    code, _, err = _cli(small_dydc_url, *args, "--totals-only", "--out", "totals.csv")
    assert code == 0, err
    assert asked == [True]
    totals = list(csv.reader(io.StringIO((tmp_path / "totals.csv").read_text())))
    assert totals[0] == rows[0]
    np.testing.assert_allclose(np.asarray(totals[1:], dtype=np.float64), table, rtol=1e-12,
                               atol=1e-12)


LINEAR_CSV = "x,scale\n0.5,10\n1.0,20\n2.0,30\n-3.0,40\n"


def test_cli_expression_scenarios(small_dydc_url: str, tmp_path: Path) -> None:
    """``dydc scenarios --expression``: C * x shifted in a parameter and an input feature, the
    P&L and its first-order explain against their closed forms; --totals-only the same."""
    source = tmp_path / "data.csv"
    source.write_text(LINEAR_CSV)
    x = np.array([0.5, 1.0, 2.0, -3.0])
    args = ["scenarios", "--expression", "C * x", "--inputs", str(source), "--names", "x",
            "--param", "C=2", "--shift", "C=rel:-0.5,0.25", "--shift", "x=abs:0,1",
            "--combine", "zip", "--explain"]
    code, out, err = _cli(small_dydc_url, *args, "--out", "-")
    assert code == 0, err
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["scenario", "C:rel", "x:abs", "total_pnl", "total_delta_pnl",
                       "total_unexplained"]
    table = np.asarray(rows[1:], dtype=np.float64)
    for row, (rel, dx) in zip(table, [(-0.5, 0.0), (0.25, 1.0)], strict=True):
        pnl = (2.0 * (1 + rel) * (x + dx) - 2.0 * x).sum()
        delta = (2.0 * rel * x + 2.0 * dx).sum()
        assert row[3] == pytest.approx(pnl, rel=1e-14)
        assert row[4] == pytest.approx(delta, rel=1e-14)
        assert row[5] == pytest.approx(len(x) * 2.0 * rel * dx, abs=1e-13)  # the cross term
    code, totals_out, err = _cli(small_dydc_url, *args, "--totals-only", "--out", "-")
    assert code == 0, err
    assert list(csv.reader(io.StringIO(totals_out))) == rows
    code, out, err = _cli(small_dydc_url, *args[:7], "--param", "C=2", "--shift",
                          "C=abs:1")
    assert code == 0, err  # a table, with the canonical text above it
    assert out.startswith("expression: C * x\n") and "expression-" not in out
    assert "expression: 1 scenarios x 4 samples" in " ".join(out.split())  # wrapped
    assert f"{float(x.sum()):.10g}" in out


def test_cli_expression_scenarios_of_an_ode(small_dydc_url: str, tmp_path: Path) -> None:
    source = tmp_path / "growth.csv"
    source.write_text("N0,t\n10,1.0\n10,2.5\n")
    ode = {"rhs": "r * n * (1 - n / K)", "state": "n", "initial": "N0", "time": "t",
           "steps": 200}
    code, out, err = _cli(small_dydc_url, "scenarios", "--ode", json.dumps(ode),
                          "--inputs", str(source), "--param", "r=0.5", "--param", "K=100",
                          "--shift", "r=abs:0.1", "--out", "-")
    assert code == 0, err
    [header, row] = list(csv.reader(io.StringIO(out)))
    assert header == ["scenario", "r:abs", "total_pnl"]
    want = sum(cf.logistic_growth(10.0, t, 0.6, 100.0)["y"]
               - cf.logistic_growth(10.0, t, 0.5, 100.0)["y"] for t in (1.0, 2.5))
    assert float(row[2]) == pytest.approx(want, rel=1e-6)  # rk4 in 200 steps


def test_cli_expression_scenarios_mistakes(small_dydc_url: str, tmp_path: Path) -> None:
    source = tmp_path / "data.csv"
    source.write_text(LINEAR_CSV)
    base = ["scenarios", "--inputs", str(source), "--param", "C=2"]
    for extra, code_wanted, message in [
        (["--shift", "C=abs:1"], 2, "give a routine's NAME, or your function"),
        (["linear", "--expression", "C * x", "--shift", "C=abs:1"], 2, "not both"),
        (["linear", "--names", "x", "--shift", "C=abs:1"], 2, "not both"),
        (["--expression", "C * x", "--ode", "{}", "--shift", "C=abs:1"], 2, "not both"),
        (["--expression", "C * x"], 2, "--shift: give at least one"),
        (["--expression", "C * x", "--shift", "C=abs:1", "--cross"], 2, "add --explain"),
        (["--expression", "C * x", "--shift", "C=abs:1", "--combine", "grid"], 2,
         "--combine"),
        (["--expression", "C * x", "--shift", "D=abs:1"], 1,
         "neither a parameter nor an input"),
        (["--expression", "C * x", "--shift", "C=abs:1,2", "--shift", "x=abs:1", "--combine",
          "zip"], 1, "combine = product"),
    ]:
        code, _, err = _cli(small_dydc_url, *base, *extra)
        assert code == code_wanted and message in err, (extra, err)
