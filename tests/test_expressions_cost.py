"""Callers' expressions are priced by their operations before anything runs (app.engine
.admission, ``Routine.operations``): never timed on the device first, so an expression too
heavy for DYDC_MAX_JOB_COST is refused without holding the worker, and a light one runs."""

from __future__ import annotations

import math

import httpx
import pytest

from app.engine.runtime.admission import CostModel
from app.expressions import Expressions
from app.expressions.ode import OdeSpec
from tests.support import scrape, value

pytestmark = pytest.mark.anyio

SENS = "/v1/expressions/sensitivities"
# a right-hand side of about 320 nodes (nested 20 deep), 10,000 RK4 steps: about 13 million
# tensor operations
HEAVY_RHS = " + ".join(["(" + " + ".join(["n * r"] * 10) + ")"] * 8)


def test_an_expression_states_its_operations_and_is_never_timed() -> None:
    expressions = Expressions()
    plain = expressions.expression("C * x + 1", ["x"], ["C"]).routine
    assert plain.operations == 5  # C, x, *, 1, +
    assert plain.compile  # compiled for large launches (tests/test_expressions_compiled.py)
    ode = expressions.ode(OdeSpec(rhs="r * n", state="n", initial="n0", time="t", steps=10,
                                  method="rk4"), ["n0", "t"], ["r"]).routine
    assert ode.operations == 1 + 10 * (4 * (3 + 2) + 8)
    model = CostModel(max_job_cost_s=10)
    assert model.measured(plain) and model.measured(ode)
    assert model.estimate(ode, None, 1000, 1) > model.estimate(plain, None, 1000, 1)
    model.learn(plain, "forward", 10, 1, seconds=100.0)  # no entry per caller text
    assert model._correction == {}


async def test_a_heavy_ode_is_refused_before_it_runs(client: httpx.AsyncClient) -> None:
    launches = value(scrape((await client.get("/metrics")).text),
                     "dydc_launch_duration_seconds_count", device="cpu")
    r = await client.post(SENS, json={
        "ode": {"rhs": HEAVY_RHS, "state": "n", "initial": "n0", "time": "t",
                "steps": 10_000, "method": "rk4"},
        "inputs": {"names": ["n0", "t"], "values": [[1.0, 1.0], [2.0, 0.5]]},
        "params": {"r": 0.1}})
    assert r.status_code == 422, r.text
    problem = r.json()
    assert problem["type"] == "urn:dydc:problem:cost-exceeded"
    assert "over the limit of 10 s (DYDC_MAX_JOB_COST)" in problem["detail"]
    after = value(scrape((await client.get("/metrics")).text),
                  "dydc_launch_duration_seconds_count", device="cpu")
    assert after == launches  # nothing ran: not the job, not a timing of the routine
    ok = await client.post(SENS, json={
        "expression": "C * x", "inputs": {"names": ["x"], "values": [1.0, 2.0, 3.0]},
        "params": {"C": 2.0}})
    assert ok.status_code == 200, ok.text
    assert ok.json()["derivatives"]["C"] == [1.0, 2.0, 3.0]


async def test_second_derivatives_of_an_ode_are_priced_as_nested_ad_runs(
        client: httpx.AsyncClient) -> None:
    """A 1,700-step ODE's second derivatives in three directions with the cross terms: nine
    passes at first-order prices came to 9.8 s, under the limit, and the job took 38 s
    (nested forward mode through each step), holding the worker past every deadline. Priced
    by what a pair costs, it is refused before it runs; the first derivatives alone are not."""
    body = {"ode": {"rhs": "-k*y", "state": "y", "initial": "N0", "time": "t",
                    "steps": 1700},
            "inputs": {"names": ["N0", "t"], "values": [[1.0, 0.5], [2.0, 3.0]]},
            "params": {"k": 0.3}, "wrt": ["k", "t", "N0"], "order": 2, "cross": True}
    r = await client.post(SENS, json=body)
    assert r.status_code == 422, r.text
    assert r.json()["type"] == "urn:dydc:problem:cost-exceeded"
    assert "3 parameter(s) and 6 second-order pair(s)" in r.json()["detail"]
    small = {**body, "ode": {**body["ode"], "steps": 20}}
    r = await client.post(SENS, json=small)
    assert r.status_code == 200, r.text
    t, n0, k = 3.0, 2.0, 0.3  # y = N0 exp(-k t), by RK4 in 20 steps: close to it
    assert r.json()["second_derivatives"]["k,k"][1] == pytest.approx(
        t * t * n0 * math.exp(-k * t), rel=1e-5)


async def test_the_ode_form_is_admitted_where_the_routine_it_reproduces_is(
        client: httpx.AsyncClient) -> None:
    """The logistic ODE at N = 30,000 is logistic_rk4's computation (0.8 s here): its price
    by operations had been 10.4 s, over DYDC_MAX_JOB_COST, so it was refused (422) where the
    routine answered. Priced now at what an operation measured costs, about twice over."""
    rows = [[10.0 + i % 50, 0.5 + (i % 7) / 4] for i in range(30_000)]
    params = {"r": 0.5, "K": 100.0}
    ode = {"rhs": "r * n * (1 - n / K)", "state": "n", "initial": "N0", "time": "t",
           "steps": 200, "method": "rk4"}
    model = CostModel(max_job_cost_s=10)
    routine = Expressions().ode(OdeSpec(**ode), ["N0", "t"], ["K", "r"]).routine
    assert model.estimate(routine, "forward", 30_000, 2) < 3.0
    got = await client.post(SENS, json={"ode": ode, "inputs": {"names": ["N0", "t"],
                                                               "values": rows},
                                        "params": params, "wrt": ["r", "K"]})
    want = await client.post("/v1/routines/logistic_rk4/sensitivities",
                             json={"inputs": rows, "params": params, "wrt": ["r", "K"]})
    assert got.status_code == want.status_code == 200, got.text
    for name in ("r", "K"):
        assert got.json()["derivatives"][name] == pytest.approx(
            want.json()["derivatives"][name], rel=1e-12)
