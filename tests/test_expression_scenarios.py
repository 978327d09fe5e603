"""POST /v1/expressions/scenarios (app.api.expression_scenarios over app.engine.runtime.scenarios):
a caller's expression revalued under every scenario, each against its closed form at the
shifted parameters or inputs; the explain; the tensor form; every mistake a 422 naming what
to change; and Client.expression_scenarios against a live service."""

from __future__ import annotations

import math
from typing import Any

import dydc
import httpx
import numpy as np
import pytest

from tests.support import ClientFactory
from tests.support import closed_forms as cf
from tests.support.problems import assert_problem

pytestmark = pytest.mark.anyio

SCEN = "/v1/expressions/scenarios"
BLACK_SCHOLES = (
    "S * ndtr((log(S / K) + (r + 0.5 * sigma ** 2) * T) / (sigma * sqrt(T))) "
    "- K * exp(-r * T) * ndtr((log(S / K) + (r - 0.5 * sigma ** 2) * T) "
    "/ (sigma * sqrt(T)))"
)
BOOK = [[49.0, 50.0, 0.3846], [100.0, 95.0, 0.5], [80.0, 100.0, 2.0], [120.0, 100.0, 1.0]]
BS_BODY: dict[str, Any] = {
    "expression": BLACK_SCHOLES,
    "inputs": {"names": ["S", "K", "T"], "values": BOOK},
    "params": {"sigma": 0.2, "r": 0.05},
    "scenarios": {"shifts": {"sigma": {"type": "relative", "values": [-0.1, 0, 0.1]},
                             "r": {"type": "absolute", "values": [-0.01, 0.01]}}},
}
X = [0.5, 1.0, 2.0, -3.0]
LINEAR: dict[str, Any] = {
    "expression": "C * x", "inputs": {"names": ["x"], "values": X}, "params": {"C": 2.0},
    "scenarios": {"shifts": {"C": {"type": "relative", "values": [-0.5, 0.25]},
                             "x": {"type": "absolute", "values": [0.0, 1.0]}},
                  "combine": "zip"},
    "explain": True,
}


def bs(sigma: float, r: float) -> np.ndarray:
    return np.array([cf.black_scholes_greeks(s, k, t, sigma, r)["price"] for s, k, t in BOOK])


async def test_black_scholes_as_an_expression_matches_the_closed_form_in_every_scenario(
        client: httpx.AsyncClient) -> None:
    r = await client.post(SCEN, json=BS_BODY)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["routine"].startswith("expression") and "ndtr" in doc["expression"]
    np.testing.assert_allclose(doc["base"], bs(0.2, 0.05), rtol=1e-12, atol=0)
    grid = [(0.2 * (1 + a), 0.05 + b) for a in (-0.1, 0.0, 0.1) for b in (-0.01, 0.01)]
    assert doc["scenario_count"] == len(grid)
    for scenario, (sigma, rate) in zip(doc["scenarios"], grid, strict=True):
        want = bs(sigma, rate)
        np.testing.assert_allclose(scenario["values"], want, rtol=1e-12, atol=0)
        np.testing.assert_allclose(scenario["pnl"], want - bs(0.2, 0.05), rtol=1e-9, atol=1e-12)
    # the same numbers as the routine's route
    routine = await client.post("/v1/routines/black_scholes_call/scenarios",
                                json={**{k: BS_BODY[k] for k in ("params", "scenarios")},
                                      "inputs": BOOK})
    for mine, theirs in zip(doc["scenarios"], routine.json()["scenarios"], strict=True):
        np.testing.assert_allclose(mine["values"], theirs["values"], rtol=1e-12, atol=0)


async def test_a_linear_expression_shifted_in_a_parameter_and_an_input(
        client: httpx.AsyncClient) -> None:
    r = await client.post(SCEN, json=LINEAR)
    assert r.status_code == 200, r.text
    doc = r.json()
    x = np.array(X)
    assert doc["base"] == pytest.approx((2.0 * x).tolist(), rel=1e-15)
    for scenario, (rel, dx) in zip(doc["scenarios"], [(-0.5, 0.0), (0.25, 1.0)], strict=True):
        c = 2.0 * (1 + rel)
        assert scenario["shifts"] == {"C": 2.0 * rel, "x": [dx] * 4}  # an input: per sample
        np.testing.assert_allclose(scenario["values"], c * (x + dx), rtol=1e-15)
        # first order: dC * x + C * dx; what is left is the cross term dC * dx
        np.testing.assert_allclose(scenario["delta_pnl"], 2.0 * rel * x + 2.0 * dx, rtol=1e-15)
        np.testing.assert_allclose(scenario["unexplained"], np.full(4, 2.0 * rel * dx),
                                   rtol=1e-12, atol=1e-15)
    second = (await client.post(SCEN, json={**LINEAR, "order": 2, "cross": True})).json()
    for scenario in second["scenarios"]:  # order 2 with the cross term: exact
        assert max(abs(u) for u in scenario["unexplained"]) <= 1e-14


async def test_the_tensor_form_and_totals_only(client: httpx.AsyncClient) -> None:
    tensors = await client.post(SCEN, json=BS_BODY,
                                headers={"Accept": "application/vnd.dydc.tensors"})
    assert tensors.status_code == 200, tensors.text
    assert tensors.headers["content-type"] == "application/vnd.dydc.tensors"
    assert int(tensors.headers["inference-header-content-length"]) < len(tensors.content)
    totals = (await client.post(SCEN, json={**BS_BODY, "totals_only": True})).json()
    assert "base" not in totals and "values" not in totals["scenarios"][0]
    full = (await client.post(SCEN, json=BS_BODY)).json()
    assert totals["total_pnl"] == full["total_pnl"]


@pytest.mark.parametrize(("change", "needles"), [
    ({"scenarios": {"shifts": {"vol": {"type": "absolute", "values": [0.1]}}}},
     ["'vol'", "neither a parameter nor an input", "sigma", "S, K, T"]),
    # explained, wrt defaults to the factors: the unknown one is still the shift's mistake
    ({"scenarios": {"shifts": {"vol": {"type": "absolute", "values": [0.1]}}},
      "explain": True}, ["scenarios shift 'vol'", "neither a parameter nor an input"]),
    ({"scenarios": {"shifts": {}}}, ["scenarios.shifts is empty"]),
    ({"scenarios": {"shifts": {"sigma": {"type": "absolute", "values": [0.1]}},
                    "list": [{"sigma": 0.1}]}}, ["not both"]),
    ({"scenarios": {"list": []}}, ["scenarios.list is empty"]),
    ({"scenarios": {"shifts": {"sigma": {"type": "absolute", "values": [0.1, 0.2]},
                               "r": {"type": "absolute", "values": [0.1]}},
                    "combine": "zip"}}, ["sigma has 2", "r has 1", "combine = product"]),
    ({"scenarios": {"shifts": {"sigma": {"type": "sideways", "values": [0.1]}}}},
     ["scenarios.shifts.sigma.type"]),
    ({"scenarios": {"shifts": {"sigma": {"type": "absolute", "values": []}}}},
     ["scenarios.shifts.sigma.values"]),
    ({"expression": "sigma * S + vega"}, ["vega"]),
    ({"expression": "__import__('os')"}, ["__import__"]),
    ({"ode": {"rhs": "-r * n", "state": "n", "initial": "S", "time": "T"}},
     ["send one of expression", "ode"]),
    ({"totals_only": "yes"}, ["totals_only"]),
])
async def test_every_mistake_is_a_422_that_says_what_to_change(
        client: httpx.AsyncClient, change: dict[str, Any], needles: list[str]) -> None:
    r = await client.post(SCEN, json={**BS_BODY, **change})
    assert_problem(r, 422, *needles)


async def test_limits_name_their_settings(make_client: ClientFactory) -> None:
    async with make_client(max_scenarios=4, max_samples=20) as c:
        assert_problem(await c.post(SCEN, json=BS_BODY), 422, "6 scenarios",
                       "DYDC_MAX_SCENARIOS")
        zipped = {**BS_BODY, "inputs": {"names": ["S", "K", "T"], "values": BOOK * 2},
                  "scenarios": {"shifts": {"sigma": {"type": "absolute",
                                                     "values": [0.0, 0.01, 0.02]}}}}
        assert_problem(await c.post(SCEN, json=zipped), 422, "24 samples",
                       "DYDC_MAX_SAMPLES")


def test_the_client_reads_both_forms(small_dydc_url: str) -> None:
    shifts = {"sigma": ("relative", [-0.1, 0.0, 0.1]), "r": ("absolute", [-0.01, 0.01])}
    book = np.array(BOOK)
    with (dydc.Client(small_dydc_url) as client,
          dydc.Client(small_dydc_url, protocol="json") as json_client):
        r = client.expression_scenarios(BLACK_SCHOLES, book, {"sigma": 0.2, "r": 0.05},
                                        shifts, names=["S", "K", "T"], explain=True)
        j = json_client.expression_scenarios(BLACK_SCHOLES, book, {"sigma": 0.2, "r": 0.05},
                                             shifts, names="S,K,T", explain=True)
        totals = client.expression_scenarios(BLACK_SCHOLES, book, {"sigma": 0.2, "r": 0.05},
                                             shifts, names=["S", "K", "T"], totals_only=True)
    assert r.expression is not None and r.expression == j.expression
    assert r.values is not None and r.values.shape == (6, 4)
    for key in ("base", "values", "pnl", "delta_pnl", "unexplained", "total_pnl"):
        np.testing.assert_array_equal(getattr(r, key), getattr(j, key))
    np.testing.assert_allclose(r.values[5], bs(0.22, 0.06), rtol=1e-12, atol=0)
    assert totals.values is None and totals.base is None
    np.testing.assert_allclose(totals.total_pnl, r.total_pnl, rtol=1e-12)
    assert math.isclose(float(r.total_pnl[0]), float(r.pnl[0].sum()), rel_tol=1e-12)  # type: ignore[index]


async def _worst_unexplained(client: httpx.AsyncClient, h: float) -> float:
    body = {**BS_BODY, "explain": True, "order": 2, "cross": True, "wrt": ["S", "sigma", "r"],
            "scenarios": {"list": [{"S": 10 * h, "sigma": h, "r": h / 4},
                                   {"S": -10 * h, "sigma": h / 2, "r": -h / 4}]}}
    r = await client.post(SCEN, json=body)
    assert r.status_code == 200, r.text
    return max(abs(u) for s in r.json()["scenarios"] for u in s["unexplained"])


async def test_the_explain_of_an_expression_shrinks_as_the_cube_of_the_shift(
        client: httpx.AsyncClient) -> None:
    """Black-Scholes as an expression at order 2 with the cross terms: shifts halved, the
    unexplained P&L shrinks by 2^3; C * x shifted in C alone is explained exactly at order 1."""
    big, small = await _worst_unexplained(client, 0.02), await _worst_unexplained(client, 0.01)
    assert small > 0
    assert 6.0 < big / small < 10.0, (big, small)
    r = await client.post(SCEN, json={**LINEAR, "scenarios": {"shifts": {
        "C": {"type": "absolute", "values": [-2.0, 0.25, 3.0]}}}})
    assert r.status_code == 200, r.text
    for scenario, d in zip(r.json()["scenarios"], [-2.0, 0.25, 3.0], strict=True):
        np.testing.assert_allclose(scenario["pnl"], d * np.array(X), rtol=1e-15)
        np.testing.assert_allclose(scenario["delta_pnl"], d * np.array(X), rtol=1e-15)
        assert max(abs(u) for u in scenario["unexplained"]) <= 1e-13
        assert abs(scenario["total_unexplained"]) <= 1e-12


async def test_a_scenario_outside_the_domain_is_named_by_scenario_and_sample(
        client: httpx.AsyncClient) -> None:
    """sqrt(v) at v = 0.04 - 0.05 is NaN: the 422 names scenario 1 and its first sample (not
    row 2 of the S x N revaluation), with that scenario's shift, never the whole batch's."""
    body = {"expression": "sqrt(v) * x", "inputs": {"names": ["x"], "values": [1, 2]},
            "params": {"v": 0.04},
            "scenarios": {"shifts": {"v": {"type": "absolute", "values": [0, -0.05]}}}}
    problem = assert_problem(await client.post(SCEN, json=body), 422,
                             "non-finite value for sample 0 under scenario 1",
                             "'v': -0.05", "use smaller shifts")
    assert "sample 2" not in str(problem["detail"])


async def test_a_base_outside_the_domain_is_named_by_its_sample(
        client: httpx.AsyncClient) -> None:
    body = {"expression": "sqrt(x)", "inputs": {"names": ["x"], "values": [4, -1]},
            "params": {"v": 0.04},
            "scenarios": {"shifts": {"v": {"type": "absolute", "values": [0, 0.01]}}}}
    problem = assert_problem(await client.post(SCEN, json=body), 422,
                             "non-finite value for sample 1")
    assert "scenario" not in str(problem["detail"])


@pytest.mark.parametrize(("route", "body", "needle"), [
    (SCEN, {"expression": "C * x", "inputs": {"names": ["x"], "values": [1.0]},
            "params": {"C": 2.0},
            "scenarios": {"shifts": {"D": {"type": "absolute", "values": [1]}}}},
     "neither a parameter nor an input of the expression; its parameters are: C"),
    (SCEN, {"expression": "log(C * x)", "inputs": {"names": ["x"], "values": [1.0]},
            "params": {"C": 2.0}, "scenarios": {"list": [{"C": -3.0}]}},
     "the expression gave a non-finite value for sample 0 under scenario 0"),
    ("/v1/expressions/sensitivities",
     {"expression": "C * x", "inputs": {"names": ["x"], "values": [1.0]},
      "params": {"C": 2.0}, "wrt": ["D"]}, "of the expression; its parameters are: C"),
])
async def test_messages_name_the_expression_not_the_services_id_for_it(
        client: httpx.AsyncClient, route: str, body: dict[str, Any], needle: str) -> None:
    r = await client.post(route, json=body)
    detail = assert_problem(r, 422, needle)["detail"]
    assert "expression-" not in detail and "routine" not in detail, detail
