"""POST /v1/routines/{name}/scenarios (app.api.scenarios over app.engine.runtime.scenarios): every
scenario against the closed form at its shifted parameters, the three ways to write
scenarios, the P&L and its Taylor explain (exact for a linear P&L, shrinking as the cube of
the shift at order 2), one launch for all scenarios, and every error a 422 naming what to
change."""

from __future__ import annotations

import importlib
import itertools
import math
import threading
from typing import Any

import anyio
import httpx
import numpy as np
import pytest

from app.engine.runtime import scenarios as engine_scenarios
from tests.support import ClientFactory
from tests.support import closed_forms as cf

pytestmark = pytest.mark.anyio

SCEN = "/v1/routines/{}/scenarios"
BOOK = [[49.0, 50.0, 0.3846], [100.0, 95.0, 0.5], [80.0, 100.0, 2.0], [120.0, 100.0, 1.0]]
BASE = {"sigma": 0.2, "r": 0.05}


def price(row: list[float], sigma: float, r: float) -> float:
    return cf.black_scholes_greeks(row[0], row[1], row[2], sigma, r)["price"]


def close(a: float, b: float, rel: float = 1e-12) -> bool:
    return abs(a - b) <= rel * max(abs(b), 1e-300) + 1e-14


async def post(client: httpx.AsyncClient, routine: str, body: dict[str, object],
               query: str = "") -> httpx.Response:
    return await client.post(SCEN.format(routine) + query, json=body)


async def test_a_product_grid_matches_the_closed_form_in_every_scenario(
        client: httpx.AsyncClient) -> None:
    body = {"inputs": BOOK, "params": BASE,
            "scenarios": {"shifts": {"sigma": {"type": "relative", "values": [-0.1, 0, 0.1]},
                                     "r": {"type": "absolute", "values": [-0.01, 0.01]}},
                          "combine": "product"}}
    r = await post(client, "black_scholes_call", body)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["scenario_count"] == 6 and len(doc["scenarios"]) == 6
    base = [price(row, 0.2, 0.05) for row in BOOK]
    assert all(close(a, b) for a, b in zip(doc["base"], base, strict=True))
    grid = list(itertools.product([-0.1, 0.0, 0.1], [-0.01, 0.01]))  # sigma first, as named
    for scenario, (rel, dr) in zip(doc["scenarios"], grid, strict=True):
        assert scenario["shifts"] == pytest.approx({"sigma": 0.2 * rel, "r": dr}, abs=1e-15)
        sigma, rate = 0.2 * (1 + rel), 0.05 + dr
        want = [price(row, sigma, rate) for row in BOOK]
        assert all(close(a, b) for a, b in zip(scenario["values"], want, strict=True))
        pnl = [v - b for v, b in zip(scenario["values"], doc["base"], strict=True)]
        assert scenario["pnl"] == pytest.approx(pnl, rel=1e-12, abs=1e-13)
        assert scenario["total_pnl"] == pytest.approx(sum(pnl), rel=1e-12, abs=1e-12)
        assert "delta_pnl" not in scenario
    assert doc["total_pnl"] == [s["total_pnl"] for s in doc["scenarios"]]


async def test_zip_and_explicit_lists(client: httpx.AsyncClient) -> None:
    zipped = await post(client, "black_scholes_call", {
        "inputs": BOOK, "params": BASE,
        "scenarios": {"shifts": {"sigma": {"type": "absolute", "values": [0.01, 0.02]},
                                 "r": {"type": "absolute", "values": [-0.005, 0.0]}},
                      "combine": "zip"}})
    listed = await post(client, "black_scholes_call", {
        "inputs": BOOK, "params": BASE,
        "scenarios": {"list": [{"sigma": 0.01, "r": -0.005}, {"sigma": 0.02, "r": 0.0}]}})
    spelt_out = await post(client, "black_scholes_call", {  # the default, given: no matter
        "inputs": BOOK, "params": BASE, "scenarios": {
            "list": [{"sigma": 0.01, "r": -0.005}, {"sigma": 0.02, "r": 0.0}],
            "combine": "product"}})
    assert zipped.status_code == 200 and listed.status_code == 200, zipped.text + listed.text
    assert spelt_out.status_code == 200, spelt_out.text
    for doc in (zipped.json(), listed.json(), spelt_out.json()):
        assert doc["scenario_count"] == 2
        for scenario, (ds, dr) in zip(doc["scenarios"], [(0.01, -0.005), (0.02, 0.0)],
                                      strict=True):
            want = [price(row, 0.2 + ds, 0.05 + dr) for row in BOOK]
            assert all(close(a, b) for a, b in zip(scenario["values"], want, strict=True))


async def test_a_linear_pnl_is_explained_exactly_at_first_order(
        client: httpx.AsyncClient) -> None:
    x = [0.5, -1.0, 2.0, 3.25]
    r = await post(client, "linear", {
        "inputs": x, "params": {"C": 1.5}, "explain": True,
        "scenarios": {"shifts": {"C": {"type": "absolute", "values": [-2.0, 0.25, 3.0]}}}})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["wrt"] == ["C"] and doc["derivatives"]["C"] == x
    for scenario, d in zip(doc["scenarios"], [-2.0, 0.25, 3.0], strict=True):
        assert scenario["pnl"] == pytest.approx([d * v for v in x], rel=1e-15)
        assert scenario["delta_pnl"] == pytest.approx([d * v for v in x], rel=1e-15)
        assert max(abs(u) for u in scenario["unexplained"]) <= 1e-13
        assert abs(scenario["total_unexplained"]) <= 1e-12
        assert "gamma_pnl" not in scenario


async def _worst_unexplained(client: httpx.AsyncClient, h: float) -> float:
    r = await post(client, "black_scholes_call", {
        "inputs": BOOK, "params": BASE, "explain": True, "order": 2, "cross": True,
        "wrt": ["S", "sigma", "r"],
        "scenarios": {"list": [{"S": 10 * h, "sigma": h, "r": h / 4},
                               {"S": -10 * h, "sigma": h / 2, "r": -h / 4}]}})
    assert r.status_code == 200, r.text
    doc = r.json()
    for scenario in doc["scenarios"]:
        predicted = [a + b for a, b in zip(scenario["delta_pnl"], scenario["gamma_pnl"],
                                           strict=True)]
        assert scenario["unexplained"] == pytest.approx(
            [p - q for p, q in zip(scenario["pnl"], predicted, strict=True)], abs=1e-13)
    return max(abs(u) for s in doc["scenarios"] for u in s["unexplained"])


async def test_a_second_order_explain_leaves_a_third_order_remainder(
        client: httpx.AsyncClient) -> None:
    """Shifts halved: the unexplained P&L shrinks by 2^3 (the Taylor remainder is cubic)."""
    big, small = await _worst_unexplained(client, 0.02), await _worst_unexplained(client, 0.01)
    assert small > 0
    assert 6.0 < big / small < 10.0, (big, small)


async def test_the_explain_terms_are_the_closed_form_greeks(client: httpx.AsyncClient) -> None:
    row, ds, dsig = BOOK[1], 2.0, 0.01
    r = await post(client, "black_scholes_call", {
        "inputs": [row], "params": BASE, "explain": True, "order": 2, "cross": True,
        "scenarios": {"list": [{"S": ds, "sigma": dsig}]}})
    assert r.status_code == 200, r.text
    [scenario] = r.json()["scenarios"]
    g = cf.black_scholes_greeks(row[0], row[1], row[2], 0.2, 0.05)
    assert r.json()["wrt"] == ["S", "sigma"]  # the shifted factors, as named
    assert math.isclose(scenario["delta_pnl"][0], g["S"] * ds + g["sigma"] * dsig,
                        rel_tol=1e-12)
    gamma = 0.5 * g["S,S"] * ds**2 + g["S,sigma"] * ds * dsig \
        + 0.5 * g["sigma,sigma"] * dsig**2
    assert math.isclose(scenario["gamma_pnl"][0], gamma, rel_tol=1e-11)


async def test_per_sample_bases_shift_per_sample(client: httpx.AsyncClient) -> None:
    sigmas = [0.2, 0.35, 0.6, 0.25]
    r = await post(client, "black_scholes_call", {
        "inputs": BOOK, "params": {"sigma": sigmas, "r": 0.05},
        "scenarios": {"shifts": {"sigma": {"type": "relative", "values": [0.5]},
                                 "S": {"type": "relative", "values": [-0.2]}}}})
    assert r.status_code == 200, r.text
    [scenario] = r.json()["scenarios"]
    assert scenario["shifts"]["sigma"] == pytest.approx([0.5 * s for s in sigmas])
    assert scenario["shifts"]["S"] == pytest.approx([-0.2 * row[0] for row in BOOK])
    want = [cf.black_scholes_greeks(0.8 * row[0], row[1], row[2], 1.5 * s, 0.05)["price"]
            for row, s in zip(BOOK, sigmas, strict=True)]
    assert all(close(a, b) for a, b in zip(scenario["values"], want, strict=True))


async def test_a_per_sample_base_stays_in_the_scenarios_that_leave_it(
        client: httpx.AsyncClient) -> None:
    """Per-sample sigmas, shifted in one scenario and left in the other two: each scenario
    revalues every sample at its own sigma (the S x N parameter written scenario by
    scenario), while r, one number, moves in one scenario only."""
    sigmas = [0.2, 0.35, 0.6, 0.25]
    r = await post(client, "black_scholes_call", {
        "inputs": BOOK, "params": {"sigma": sigmas, "r": 0.05},
        "scenarios": {"list": [{"r": 0.01}, {"sigma": 0.1}, {"r": -0.02}]}})
    assert r.status_code == 200, r.text
    got = [scenario["values"] for scenario in r.json()["scenarios"]]
    want = [[price(row, s, 0.06) for row, s in zip(BOOK, sigmas, strict=True)],
            [price(row, s + 0.1, 0.05) for row, s in zip(BOOK, sigmas, strict=True)],
            [price(row, s, 0.03) for row, s in zip(BOOK, sigmas, strict=True)]]
    for values, expected in zip(got, want, strict=True):
        assert all(close(a, b) for a, b in zip(values, expected, strict=True))


async def test_all_scenarios_run_as_one_launch(make_client: ClientFactory) -> None:
    async with make_client() as c:
        before = (await c.get("/metrics")).text
        r = await post(c, "linear", {
            "inputs": list(np.linspace(0, 1, 50)), "params": {"C": 2.0},
            "scenarios": {"shifts": {"C": {"type": "absolute",
                                           "values": list(np.linspace(-1, 1, 40))}}}})
        assert r.status_code == 200, r.text
        after = (await c.get("/metrics")).text

    def launched_samples(text: str) -> list[float]:
        return [float(line.split()[-1]) for line in text.splitlines()
                if line.startswith("dydc_batch_samples_sum")]

    # one launch of 40 x 50 samples and one of the base's 50
    assert sum(launched_samples(after)) - sum(launched_samples(before)) == 40 * 50 + 50


@pytest.mark.parametrize(("scenarios", "params", "words"), [
    ({"shifts": {"vol": {"type": "absolute", "values": [0.1]}}}, BASE,
     ["'vol'", "neither a parameter nor an input", "its parameters are: sigma, r"]),
    ({"shifts": {"sigma": {"type": "absolute", "values": []}}}, BASE, ["values"]),
    ({"shifts": {}}, BASE, ["scenarios.shifts is empty"]),
    ({"list": []}, BASE, ["scenarios.list is empty"]),
    ({"list": [{}]}, BASE, ["scenarios.list[0] shifts nothing"]),
    ({}, BASE, ["either shifts", "or list"]),
    ({"shifts": {"sigma": {"type": "absolute", "values": [0.1, 0.2]},
                 "r": {"type": "absolute", "values": [0.1]}}, "combine": "zip"}, BASE,
     ["every list must be as long", "sigma has 2", "r has 1", "combine = product"]),
    ({"shifts": {"sigma": {"type": "relative", "values": [-2.0]}}}, BASE,
     ["scenario 0 moves sigma of sample 0 to -0.2", "outside its bounds", "smaller shift"]),
    ({"shifts": {"sigma": {"type": "percent", "values": [1]}}}, BASE, ["type"]),
    ({"shifts": {"sigma": {"type": "absolute", "values": [0.1]}}, "combine": "cartesian"},
     BASE, ["combine"]),
    # a relative shift of a value of 0 moved nothing, answered 200 (as a bump, it is a 422)
    ({"shifts": {"r": {"type": "relative", "values": [-0.5, 0.5]}}}, {"sigma": 0.2, "r": 0.0},
     ["scenario 0 shifts r by a relative -0.5", "r is 0", "give its shifts as absolute"]),
    # combine has no meaning for a list (it was ignored)
    ({"list": [{"sigma": 0.01}], "combine": "zip"}, BASE,
     ["scenarios.combine = 'zip'", "leave combine out"]),
])
async def test_every_mistake_is_a_422_that_says_what_to_change(
        client: httpx.AsyncClient, scenarios: dict[str, object], params: dict[str, object],
        words: list[str]) -> None:
    r = await post(client, "black_scholes_call", {"inputs": BOOK, "params": params,
                                                  "scenarios": scenarios})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    for word in words:
        assert word in detail, (word, detail)


async def test_a_parameter_shifts_as_it_runs_in_float32(client: httpx.AsyncClient) -> None:
    """A parameter moves in float64 and runs in the job's dtype: in float32, 1 + 1e-9 is 1,
    so that scenario moves nothing and its shift, P&L and explain are all 0 (the shift was
    explained as 1e-9, and the whole of it left unexplained); a feature at 0 in some samples
    only is shifted relatively where it is not."""
    r = await post(client, "linear", {
        "inputs": [0.0, 1.0, 2.0], "params": {"C": 1.0}, "dtype": "float32", "explain": True,
        "scenarios": {"list": [{"C": 1e-9}, {"C": 0.25}]}})
    assert r.status_code == 200, r.text
    still, moved = r.json()["scenarios"]
    assert still["shifts"] == {"C": 0.0}
    assert still["pnl"] == still["delta_pnl"] == still["unexplained"] == [0.0, 0.0, 0.0]
    assert moved["shifts"] == {"C": 0.25} and moved["pnl"] == [0.0, 0.25, 0.5]
    assert moved["unexplained"] == [0.0, 0.0, 0.0]
    r = await post(client, "linear", {"inputs": [0.0, 1.0], "params": {"C": 2.0},
                                      "scenarios": {"shifts": {"x": {"type": "relative",
                                                                     "values": [0.5]}}}})
    assert r.status_code == 200, r.text
    assert r.json()["scenarios"][0]["shifts"] == {"x": [0.0, 0.5]}


@pytest.mark.parametrize(("routine", "body", "words"), [
    ("black_scholes_call", {"inputs": BOOK, "params": BASE, "scenarios": {"shifts": {
        "S": {"type": "relative", "values": [0.0, 1e308]}}}},
     ["scenario 1 moves S of sample 0 to inf", "not a finite number in float64"]),
    ("black_scholes_call", {"inputs": BOOK, "params": BASE, "dtype": "float32",
                            "scenarios": {"shifts": {"K": {"type": "relative",
                                                           "values": [1e37]}}}},
     ["scenario 0 moves K of sample 0 to inf", "not a finite number in float32"]),
    ("linear", {"inputs": [1.0, 2.0], "params": {"C": [1.0, 1e300]}, "scenarios": {"shifts": {
        "C": {"type": "relative", "values": [1e10]}}}},
     ["scenario 0 moves C of sample 1 to inf", "smaller shift"]),
    # a shared parameter moves in float64 and runs in float32 (it was inf there: 200 with
    # nulls, or the routine's domain blamed)
    ("exponential_decay", {"inputs": [[1.0, 1.0]], "params": {"k": 1.0}, "dtype": "float32",
                           "scenarios": {"list": [{"k": 1e39}]}, "explain": True},
     ["scenario 0 moves k of sample 0 to 1e+39", "not a finite number in float32"]),
    # finite values whose P&L, Taylor terms or sums are not (JSON carried null in a 200)
    ("exponential_decay", {"inputs": [[1e300, 1.0], [1.0, 1.0]], "params": {"k": 1.0},
                           "scenarios": {"list": [{"k": 1e10}]}, "explain": True},
     ["scenario 0's delta_pnl for sample 0 is -inf", "not a finite number in float64"]),
    ("linear", {"inputs": [1.7e308] * 3, "params": {"C": 1.0},
                "scenarios": {"list": [{"C": -0.5}]}},
     ["scenario 0's total_pnl, the sum over the samples, is beyond the largest float64"]),
])
async def test_a_shift_to_a_number_that_is_not_finite_is_a_422(
        client: httpx.AsyncClient, routine: str, body: dict[str, object],
        words: list[str]) -> None:
    """The shifted samples are not validated again as a request's are: the plan checks
    what it moved."""
    r = await post(client, routine, body)
    assert r.status_code == 422, r.text
    for word in words:
        assert word in r.json()["detail"], (word, r.text)


HUGE = 10**400  # an integer no float holds


@pytest.mark.parametrize(("body", "words"), [
    ({"scenarios": {"shifts": {"r": {"type": "absolute", "values": [0.01, HUGE]}}}},
     ["scenarios.shifts.r.values[1]", "too large for a float", "finite numbers"]),
    ({"scenarios": {"list": [{"r": HUGE}]}},
     ["scenarios.list[0].r", "too large for a float"]),
    # without the explain, wrt, order and cross go unused, but a wrong value is refused
    ({"scenarios": {"list": [{"r": 0.01}]}, "order": 3}, ["order = 3; use 1 or 2"]),
    ({"scenarios": {"list": [{"r": 0.01}]}, "order": -7}, ["order = -7; use 1 or 2"]),
    ({"scenarios": {"list": [{"r": 0.01}]}, "cross": True},
     ["cross applies to second derivatives"]),
    ({"scenarios": {"list": [{"r": 0.01}]}, "wrt": ["zz"]},
     ["'zz'", "neither a parameter nor an input"]),
    ({"scenarios": {"list": [{"r": 0.01}]}, "wrt": ["r", "r"]}, ["'r' more than once"]),
    ({"scenarios": {"list": [{"r": 0.01}]}, "wrt": []}, ["wrt is empty"]),
    # with it, an empty wrt is refused as /sensitivities refuses it, not taken as absent
    ({"scenarios": {"list": [{"r": 0.01}]}, "wrt": [], "explain": True},
     ["wrt is empty", "omit wrt to explain it by the shifted factors (r)"]),
])
async def test_what_no_request_could_mean_is_a_422(
        client: httpx.AsyncClient, body: dict[str, object], words: list[str]) -> None:
    r = await post(client, "black_scholes_call", {"inputs": BOOK, "params": BASE, **body})
    assert r.status_code == 422, r.text
    for word in words:
        assert word in r.json()["detail"], (word, r.text)


async def test_unused_options_that_a_sensitivities_body_may_carry_are_accepted(
        client: httpx.AsyncClient) -> None:
    """One body serves /sensitivities and /scenarios: valid wrt, order and cross pass
    without the explain, and change nothing."""
    plain = await post(client, "black_scholes_call", {
        "inputs": BOOK, "params": BASE, "scenarios": {"list": [{"r": 0.01}]}})
    carried = await post(client, "black_scholes_call", {
        "inputs": BOOK, "params": BASE, "scenarios": {"list": [{"r": 0.01}]},
        "wrt": ["sigma", "r"], "order": 2, "cross": True})
    assert plain.status_code == carried.status_code == 200, carried.text
    assert carried.json()["scenarios"] == plain.json()["scenarios"]
    assert "delta_pnl" not in carried.json()["scenarios"][0]


async def test_too_many_scenarios_or_samples(make_client: ClientFactory) -> None:
    async with make_client(max_scenarios=4, max_samples=30) as c:
        grid = {"shifts": {"C": {"type": "absolute", "values": [1, 2, 3]},
                           "x": {"type": "relative", "values": [0.1, 0.2]}}}
        r = await post(c, "linear", {"inputs": [1.0, 2.0], "scenarios": grid})
        assert r.status_code == 422, r.text
        assert "6 scenarios; the limit is 4 per request (DYDC_MAX_SCENARIOS)" in r.json()["detail"]
        r = await post(c, "linear", {"inputs": [float(i) for i in range(10)], "scenarios": {
            "shifts": {"C": {"type": "absolute", "values": [1, 2, 3, 4]}}}})
        assert r.status_code == 422, r.text
        assert "4 scenarios x 10 samples = 40 samples" in r.json()["detail"]
        assert "the limit is 30 samples in all (DYDC_MAX_SAMPLES)" in r.json()["detail"]
        ok = await post(c, "linear", {"inputs": [1.0, 2.0], "scenarios": {
            "shifts": {"C": {"type": "absolute", "values": [1, 2, 3, 4]}}}})
        assert ok.status_code == 200, ok.text
        # one list longer than the limit is refused before its numbers are validated
        for scenarios in ({"shifts": {"C": {"type": "absolute", "values": [1, 2, 3, 4, 5]}}},
                          {"shifts": {"C": {"type": "absolute", "values": [1, 2, 3, 4, 5]},
                                      "x": {"type": "banana", "values": "not a list"}}},
                          {"list": [{"C": 1}, {"C": 2}, {"C": 3}, {"C": 4}, {"C": "x"}]}):
            r = await post(c, "linear", {"inputs": [1.0, 2.0], "scenarios": scenarios})
            assert r.status_code == 422, r.text
            assert "at least 5 scenarios; the limit is 4 per request (DYDC_MAX_SCENARIOS)" \
                in r.json()["detail"]
        r = await c.post("/v1/expressions/scenarios", json={
            "expression": "C * x", "inputs": {"names": ["x"], "values": [1.0, 2.0]},
            "params": {"C": 1.0},
            "scenarios": {"list": [{"C": i} for i in range(5)]}})
        assert r.status_code == 422, r.text
        assert "at least 5 scenarios" in r.json()["detail"]
        r = await c.post("/v1/expressions/scenarios", json={
            "expression": "C * x", "inputs": {"names": ["x"], "values": [1.0, 2.0]},
            "params": {"C": 1.0},
            "scenarios": {"list": [{"C": i} for i in range(4)]}})
        assert r.status_code == 200, r.text


async def test_unknown_routine_and_content_type(client: httpx.AsyncClient) -> None:
    r = await post(client, "nope", {"inputs": [1.0], "scenarios": {"list": [{"C": 1}]}})
    assert r.status_code == 404
    r = await client.post(SCEN.format("linear"), content=b'{"inputs":[1]}',
                          headers={"content-type": "text/plain"})
    assert r.status_code == 415


async def test_query_options_are_the_explains_and_said_so_without_it(
        client: httpx.AsyncClient) -> None:
    """The strategy and the bump settings shape the explain's derivatives: with the explain,
    the bump that ran is echoed as sensitivities echoes it; without it they are refused (they
    were taken and ignored, ?strategy=bogus included); check has no meaning here (it was
    validated, then dropped from the answer)."""
    body = {"inputs": BOOK, "params": BASE, "scenarios": {"list": [{"sigma": 0.01}]}}
    url = "/v1/routines/black_scholes_call/scenarios"
    for query, word in (("strategy=bogus", "strategy shapes"), ("shift=0.01", "shift shapes"),
                        ("strategy=forward&scheme=central", "strategy, scheme shape")):
        r = await client.post(f"{url}?{query}", json=body)
        assert r.status_code == 422, r.text
        assert word in r.json()["detail"] and '"explain": true' in r.json()["detail"]
    assert (await client.post(f"{url}?strategy=auto", json=body)).status_code == 200
    r = await client.post(f"{url}?check=finite-difference", json={**body, "explain": True})
    assert r.status_code == 422 and "unknown query option 'check'" in r.json()["detail"]
    # a bump setting without finite differences: said without the check this route lacks
    for query in ("shift=0.001", "strategy=forward&scheme=central"):
        r = await client.post(f"{url}?{query}", json={**body, "explain": True})
        assert r.status_code == 422, r.text
        assert "use it with strategy=finite-difference (this route has no check)" in r.json()[
            "detail"] and "check=" not in r.json()["detail"]
    r = await client.post(f"{url}?strategy=finite-difference&shift=0.001",
                          json={**body, "explain": True})
    assert r.status_code == 200, r.text
    assert r.json()["bump"] == {"shift": 0.001, "shift_type": "absolute", "scheme": "central",
                                "schemes": {"sigma": ["central"]}}  # wrt: the factors


@pytest.mark.parametrize(("module", "name"), [
    ("app.engine.runtime.scenarios", "plan"),  # the S x N samples laid out
    ("app.engine.runtime.scenarios", "_outcome"),  # the P&L, its explain and the totals
    ("app.api.scenarios", "_reply"),  # the answer
])
async def test_many_scenarios_are_worked_out_while_other_requests_are_answered(
        client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, module: str,
        name: str) -> None:
    """Each step over all S x N samples runs in a thread: a small request is answered while
    it is under way (1,000 scenarios of 2,000 options held the event loop for hundreds of
    milliseconds). The step waits for that answer, which it would never get on the loop."""
    target = importlib.import_module(module)
    monkeypatch.setattr(engine_scenarios, "OFF_LOOP_SAMPLES", 4)  # S x N = 8 here
    started, answered = threading.Event(), threading.Event()
    step = getattr(target, name)

    def waiting_step(*args: Any, **kwargs: Any) -> Any:
        started.set()
        if not answered.wait(10):
            raise AssertionError(f"{name} held the event loop")
        return step(*args, **kwargs)

    monkeypatch.setattr(target, name, waiting_step)
    body = {"inputs": BOOK[:2], "params": BASE, "explain": True,
            "scenarios": {"shifts": {"sigma": {"type": "relative", "values": [-0.1, 0.1]},
                                     "r": {"type": "absolute", "values": [-0.01, 0.01]}}}}
    results: dict[str, httpx.Response] = {}

    async def scenarios() -> None:
        results["scenarios"] = await post(client, "black_scholes_call", body)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(scenarios)
        with anyio.fail_after(10):
            while not started.is_set():
                await anyio.sleep(0.005)
        small = await client.post("/v1/routines/linear/sensitivities",
                                  json={"inputs": [1.0, 2.0], "params": {"C": 3.0}})
        answered.set()
    assert small.status_code == 200 and small.json()["derivatives"]["C"] == [1.0, 2.0]
    doc = results["scenarios"].json()
    assert results["scenarios"].status_code == 200 and doc["scenario_count"] == 4
    row = BOOK[1]
    assert close(doc["scenarios"][3]["values"][1], price(row, 0.2 * 1.1, 0.06))
