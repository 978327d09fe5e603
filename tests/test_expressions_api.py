"""The expression routes over HTTP (POST /v1/expressions/{sensitivities, evaluate, compare},
GET /v1/expressions/functions): closed forms in float64, the ODE form against the
logistic_rk4 routine, Black-Scholes with per-sample sigma against its routine, every refusal,
hostile text, and coalescing of requests for the same expression."""

from __future__ import annotations

import asyncio
import json
import math
import random
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from app.engine import Engine
from tests.support import ESCAPES, ClientFactory, scrape, value
from tests.support import closed_forms as cf

pytestmark = pytest.mark.anyio

SENS = "/v1/expressions/sensitivities"
EVAL = "/v1/expressions/evaluate"
COMPARE = "/v1/expressions/compare"
LOGISTIC = "K / (1 + (K - N0) / N0 * exp(-r * t))"
ROWS = [[10.0, 1.0], [10.0, 2.5], [50.0, 0.3], [3.0, 7.0]]
ODE = {
    "rhs": "r * n * (1 - n / K)",
    "state": "n",
    "initial": "N0",
    "time": "t",
    "steps": 200,
    "method": "rk4",
}
BLACK_SCHOLES = (
    "S * ndtr((log(S / K) + (r + 0.5 * sigma ** 2) * T) / (sigma * sqrt(T))) "
    "- K * exp(-r * T) * ndtr((log(S / K) + (r - 0.5 * sigma ** 2) * T) "
    "/ (sigma * sqrt(T)))"
)
ROWS_INPUTS = {"names": ["N0", "t"], "values": ROWS}
BS_ROWS = [[49.0, 50.0, 0.3846], [100.0, 95.0, 0.5], [80.0, 100.0, 2.0], [120.0, 100.0, 0.25]]
SIGMAS = [0.2, 0.35, 0.6, 0.15]


def logistic_body(**extra: Any) -> dict[str, Any]:
    return {
        "expression": LOGISTIC,
        "inputs": {"names": ["N0", "t"], "values": ROWS},
        "params": {"r": 0.5, "K": 100.0},
        **extra,
    }


async def refused(
    client: httpx.AsyncClient, body: Any, *needles: str, path: str = SENS, status: int = 422
) -> str:
    r = await client.post(path, json=body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    detail: str = r.json()["detail"]
    for needle in needles:
        assert needle in detail, detail
    return detail


# -- answers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["auto", "forward", "vmap-grad", "jacfwd"])
async def test_logistic_closed_form_first_and_second_order(
    client: httpx.AsyncClient, strategy: str
) -> None:
    r = await client.post(
        f"{SENS}?strategy={strategy}",
        json=logistic_body(wrt=["r", "K"], order=2, cross=True, dtype="float64"),
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["expression"] == LOGISTIC
    assert body["routine"].startswith("expression-")
    assert body["outputs"] == ["y"] and body["n"] == len(ROWS)
    assert list(body["derivatives"]) == ["r", "K"]
    for i, (n0, t) in enumerate(ROWS):
        want = cf.logistic_growth(n0, t, 0.5, 100.0)
        assert body["values"][i] == pytest.approx(want["y"], rel=1e-13)
        assert body["derivatives"]["r"][i] == pytest.approx(want["r"], rel=1e-12)
        assert body["derivatives"]["K"][i] == pytest.approx(want["K"], rel=1e-12)
        for key in ("r,r", "r,K", "K,K"):
            assert body["second_derivatives"][key][i] == pytest.approx(
                want[key], rel=1e-10, abs=1e-14
            ), key


@pytest.mark.parametrize("dtype", ["float64", "float32"])
async def test_ndtr_keeps_its_lower_tail(client: httpx.AsyncClient, dtype: str) -> None:
    """ndtr(x) far below 0, where torch.special.ndtr lost it (0 below about -8.3 in float64,
    2% off at -8; 0 below -5.5 in float32): the value and d/dC against erfc(-x/sqrt 2)/2."""
    xs = [-8.0, -9.0, -20.0] if dtype == "float64" else [-5.0, -6.0, -8.0]
    r = await client.post(SENS, json={"expression": "C * ndtr(x)", "dtype": dtype,
                                      "inputs": {"names": ["x"], "values": xs},
                                      "params": {"C": 1.0}, "wrt": ["C", "x"]})
    assert r.status_code == 200, r.text
    body = r.json()
    rel = 1e-13 if dtype == "float64" else 1e-5
    for i, x in enumerate(xs):
        cdf, pdf = 0.5 * math.erfc(-x / math.sqrt(2)), math.exp(-x * x / 2) / math.sqrt(2 * math.pi)
        assert body["values"][i] == pytest.approx(cdf, rel=rel, abs=0)
        assert body["derivatives"]["C"][i] == pytest.approx(cdf, rel=rel, abs=0)
        assert body["derivatives"]["x"][i] == pytest.approx(pdf, rel=rel, abs=0)


async def test_canonical_text_keys_the_routine(client: httpx.AsyncClient) -> None:
    """Spacing, redundant parentheses and 2.0 vs 2 give one canonical text and one routine;
    the parameters' order in the body does not matter."""
    a = (await client.post(EVAL, json=logistic_body())).json()
    b = (
        await client.post(
            EVAL,
            json={
                **logistic_body(params={"K": 100.0, "r": 0.5}),
                "expression": "K/(1+((K-N0)/N0)*exp((-r)*t))",
            },
        )
    ).json()
    assert a["expression"] == b["expression"] == LOGISTIC
    assert a["routine"] == b["routine"]
    assert a["values"] == b["values"]
    assert "derivatives" not in a


async def test_evaluate_and_compare(client: httpx.AsyncClient) -> None:
    r = await client.post(EVAL, json=logistic_body(wrt=["r"]))
    assert r.status_code == 200, r.text
    assert r.json()["values"] == pytest.approx(
        [cf.logistic_growth(n0, t, 0.5, 100.0)["y"] for n0, t in ROWS], rel=1e-13
    )
    r = await client.post(COMPARE, json=logistic_body(wrt=["r", "K"]))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["expression"] == LOGISTIC and body["reference"] == "forward"
    rows = {row["strategy"]: row for row in body["strategies"]}
    assert rows["forward"]["status"] == "ok" and rows["finite-difference"]["status"] == "ok"
    assert max(rows["finite-difference"]["max_rel_diff"].values()) < 1e-6
    for i, (n0, t) in enumerate(ROWS):
        assert body["derivatives"]["r"][i] == pytest.approx(
            cf.logistic_growth(n0, t, 0.5, 100.0)["r"], rel=1e-12
        )


async def test_the_ode_form_reproduces_logistic_rk4(client: httpx.AsyncClient) -> None:
    rng = random.Random(7)
    rows = [[rng.uniform(1, 91), rng.uniform(0, 10)] for _ in range(40)]
    rates = [rng.uniform(0.05, 1.5) for _ in rows]
    params = {"r": rates, "K": 100.0}
    # order 2 over one name here (HTTP's path; every pair is checked in
    # tests/test_expressions_ode.py): forward over forward through 200 eager RK4 steps is slow
    for order, wrt in ((1, ["r", "K", "N0", "t"]), (2, ["r"])):
        wanted = await client.post(
            "/v1/routines/logistic_rk4/sensitivities",
            json={"inputs": rows, "params": params, "wrt": wrt, "order": order},
        )
        got = await client.post(
            SENS,
            json={
                "ode": ODE,
                "inputs": {"names": ["N0", "t"], "values": rows},
                "params": params,
                "wrt": wrt,
                "order": order,
            },
        )
        assert wanted.status_code == got.status_code == 200, got.text
        want, body = wanted.json(), got.json()
        assert body["expression"] == (
            "ode(rhs=r * n * (1 - n / K), state=n, initial=N0, time=t, steps=200, method=rk4)"
        )
        assert body["outputs"] == ["n"]
        assert body["values"] == pytest.approx(want["values"], rel=1e-12, abs=1e-12)
        for key, column in want["derivatives"].items():
            assert body["derivatives"][key] == pytest.approx(column, rel=1e-12, abs=1e-12)
        for key, column in want.get("second_derivatives", {}).items():
            assert body["second_derivatives"][key] == pytest.approx(column, rel=1e-12, abs=1e-12), (
                key
            )


async def test_black_scholes_with_per_sample_sigma_matches_the_routine(
    client: httpx.AsyncClient,
) -> None:
    params = {"sigma": SIGMAS, "r": 0.05}
    wanted = await client.post(
        "/v1/routines/black_scholes_call/sensitivities",
        json={"inputs": BS_ROWS, "params": params, "wrt": ["S", "sigma", "r"]},
    )
    got = await client.post(
        SENS,
        json={
            "expression": BLACK_SCHOLES,
            "inputs": {"names": ["S", "K", "T"], "values": BS_ROWS},
            "params": params,
            "wrt": ["S", "sigma", "r"],
        },
    )
    assert wanted.status_code == got.status_code == 200, got.text
    want, body = wanted.json(), got.json()
    assert body["params"]["sigma"] == SIGMAS
    assert body["values"] == pytest.approx(want["values"], rel=1e-13)
    for key in ("S", "sigma", "r"):
        assert body["derivatives"][key] == pytest.approx(want["derivatives"][key], rel=1e-12)
    for i, ((S, K, T), s) in enumerate(zip(BS_ROWS, SIGMAS, strict=True)):
        greeks = cf.black_scholes_greeks(S, K, T, s, 0.05)
        assert body["derivatives"]["sigma"][i] == pytest.approx(greeks["sigma"], rel=1e-10)


async def test_several_outputs_and_a_flat_list_of_one_feature(client: httpx.AsyncClient) -> None:
    r = await client.post(
        SENS,
        json={
            "expression": ["a * x", "b * x ** 2"],
            "inputs": {"names": ["x"], "values": [1, 2, 3]},
            "params": {"a": 2.0, "b": 0.5},
            "wrt": ["a", "b", "x"],
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["outputs"] == ["y1", "y2"]
    assert body["expression"] == "a * x; b * x ** 2"
    assert body["values"] == [[2.0, 0.5], [4.0, 2.0], [6.0, 4.5]]
    assert body["derivatives"]["a"] == [[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]]
    assert body["derivatives"]["b"] == [[0.0, 1.0], [0.0, 4.0], [0.0, 9.0]]
    assert body["derivatives"]["x"] == [[2.0, 1.0], [2.0, 2.0], [2.0, 3.0]]


async def test_functions_lists_the_language_and_its_bounds(make_client: ClientFactory) -> None:
    async with make_client(expression_max_nodes=500) as c:
        r = await c.get("/v1/expressions/functions")
    assert r.status_code == 200
    body = r.json()
    names = {f["name"] for f in body["functions"]}
    assert {"exp", "ndtr", "norm_pdf", "clamp", "where", "gammaln"} <= names
    assert set(body["constants"]) == {"pi", "e"}
    assert "**" in body["operators"] and "<=" in body["comparisons"]
    assert body["bounds"]["max_nodes"] == {
        "value": 500,
        "setting": "DYDC_EXPRESSION_MAX_NODES",
        "description": body["bounds"]["max_nodes"]["description"],
    }
    assert body["bounds"]["max_chars"]["setting"] == "DYDC_EXPRESSION_MAX_CHARS"


async def test_whole_bounds_are_listed_as_integers(make_client: ClientFactory) -> None:
    async with make_client() as c:
        r = await c.get("/v1/expressions/functions")
    values = {key: bound["value"] for key, bound in r.json()["bounds"].items()}
    assert values == {"max_chars": 4096, "max_nodes": 1000, "max_depth": 64,
                      "max_ode_steps": 10_000, "max_exponent": 64}
    assert all(type(value) is int for value in values.values()), r.text
    assert '"value":4096,' in r.text.replace(" ", ""), r.text
    async with make_client(expression_max_exponent=2.5) as c:
        r = await c.get("/v1/expressions/functions")
    assert r.json()["bounds"]["max_exponent"]["value"] == 2.5


async def test_the_routes_are_in_the_openapi_document(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    for route in ("sensitivities", "evaluate", "compare"):
        assert "post" in paths[f"/v1/expressions/{route}"]
    assert "get" in paths["/v1/expressions/functions"]


# -- refusals -----------------------------------------------------------------------------------


async def test_a_construct_outside_the_language_is_named_with_its_column(
    client: httpx.AsyncClient,
) -> None:
    detail = await refused(client, logistic_body(expression="K * N0.real"), "column 5")
    assert "attribute" in detail
    await refused(client, logistic_body(expression="K * foo(t)"), "foo", "column 5")
    await refused(
        client, logistic_body(expression=["K * t", "r if t else K"]), "expression[1]", "column 1"
    )
    await refused(client, logistic_body(expression="K *"), "expression")


async def test_unknown_names_list_the_declared_ones(client: httpx.AsyncClient) -> None:
    detail = await refused(client, logistic_body(expression="K * t * sigma"), "sigma")
    for name in ("K", "N0", "r", "t"):
        assert name in detail
    # a parameter the expression uses but the body does not give is an unknown name
    await refused(client, logistic_body(params={"K": 100.0}), "'r'")


async def test_declared_names_are_checked(client: httpx.AsyncClient) -> None:
    await refused(
        client,
        logistic_body(inputs={"names": ["N0", "N0"], "values": ROWS}),
        "inputs.names",
        "twice",
    )
    await refused(
        client,
        logistic_body(params={"r": 0.5, "K": 1.0, "t": 2.0}),
        "both as an input and as a parameter",
    )
    await refused(client, logistic_body(params={"r": 0.5, "K": 1.0, "pi": 3.0}), "constant")
    await refused(client, logistic_body(params={"r": 0.5, "K": 1.0, "1x": 3.0}), "is not a name")
    await refused(client, logistic_body(params={}), "params")
    await refused(client, logistic_body(wrt=["r", "q"]), "'q'")


async def test_params_missing_or_empty_says_what_to_declare(client: httpx.AsyncClient) -> None:
    needed = "params: an expression needs at least one parameter in params: a name with a number"
    body = {"expression": "C * x + K", "inputs": {"names": ["x"], "values": [1.0, 2.0]}}
    for given in (body, {**body, "params": {}}):
        detail = await refused(client, given, needed, "one number per sample",
                               'the expression uses C, K besides its inputs: declare them, '
                               'e.g. "params": {"C": 1.0, "K": 1.0}')
        assert "Dictionary" not in detail and "Field required" not in detail
    await refused(client, {**body, "expression": "2 * x"}, needed,
                  "uses no name besides its inputs", 'C * x with "params": {"C": 2}')
    await refused(client, {"ode": {**ODE, "rhs": "-k * n"}, "inputs": ROWS_INPUTS}, needed,
                  "uses k besides its inputs: declare it")
    # with another problem in the body, both are said
    await refused(client, {**body, "zzz": 1}, "an expression needs at least one parameter",
                  "uses C, K besides", "unknown field 'zzz'")
    await refused(client, {**body, "expression": 3}, needed, '"params": {"C": 2}')
    await refused(client, {**body, "scenarios": {"shifts": {}}}, needed,
                  path="/v1/expressions/scenarios")


async def test_bounds_are_named(make_client: ClientFactory) -> None:
    async with make_client(
        expression_max_chars=36, expression_max_ode_steps=50, expression_max_nodes=12
    ) as c:
        await refused(c, logistic_body(), "DYDC_EXPRESSION_MAX_CHARS")
        await refused(
            c, logistic_body(expression="r*t+K+N0+r*N0+t*K+r"), "DYDC_EXPRESSION_MAX_NODES"
        )
        await refused(
            c,
            {
                "ode": {**ODE, "steps": 51},
                "inputs": {"names": ["N0", "t"], "values": ROWS},
                "params": {"r": 0.5, "K": 100.0},
            },
            "DYDC_EXPRESSION_MAX_ODE_STEPS",
        )
        await refused(
            c, logistic_body(expression="r ** 65 * t + K - N0"), "DYDC_EXPRESSION_MAX_EXPONENT"
        )
        await refused(
            c,
            logistic_body(expression="-(-(-(-(-(-(-(r)))))))*t+K+N0"),
            "DYDC_EXPRESSION_MAX_NODES",
        )
    async with make_client(expression_max_depth=3) as c:
        await refused(
            c,
            logistic_body(expression="exp(exp(exp(exp(r)))) * t * K * N0"),
            "DYDC_EXPRESSION_MAX_DEPTH",
        )


async def test_input_shapes(client: httpx.AsyncClient) -> None:
    await refused(
        client,
        logistic_body(inputs={"names": ["N0", "t"], "values": [1.0, 2.0]}),
        "flat list",
        "2 features",
    )
    await refused(
        client,
        logistic_body(inputs={"names": ["N0", "t"], "values": [[1.0, 2.0, 3.0]]}),
        "inputs.values rows have 3 numbers",
        "N0, t",
    )
    await refused(
        client,
        logistic_body(inputs={"names": ["N0", "t"], "values": [[1.0, 2.0], [3.0]]}),
        "ragged",
    )
    await refused(
        client, logistic_body(inputs={"names": ["N0", "t"], "values": [[1.0, "a"]]}), "inputs[0][1]"
    )
    await refused(client, logistic_body(inputs=ROWS), "inputs")
    await refused(client, logistic_body(inputs={"values": ROWS}), "names")
    await refused(client, logistic_body(inputs={"names": [], "values": ROWS}), "names")
    await refused(client, logistic_body(params={"r": [0.5, 0.2], "K": 100.0}), "params.r", "2")


async def test_the_body_form(client: httpx.AsyncClient) -> None:
    body = logistic_body()
    await refused(client, {**body, "ode": ODE}, "one of expression")
    del body["expression"]
    await refused(client, body, "one of expression")
    await refused(client, {**body, "ode": {**ODE, "rhs": 3}}, "rhs")
    await refused(client, {**body, "ode": {"rhs": "r", "state": "n"}}, "initial")
    await refused(client, {**body, "ode": {**ODE, "method": "rk45"}}, "rk45", "euler")
    await refused(client, {**body, "ode": {**ODE, "time": "T"}}, "ode.time")
    await refused(client, {**logistic_body(), "expresion": "x"}, "expression")
    await refused(client, logistic_body(expression=7), "expression")
    await refused(client, logistic_body(order=3, wrt=["r"]), "order")
    await refused(client, logistic_body(dtype="float16"), "float16")
    r = await client.post(
        SENS, content=b'{"expression": ', headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and "not valid JSON" in r.json()["detail"], r.text


async def test_query_options_are_checked(client: httpx.AsyncClient) -> None:
    await refused(client, logistic_body(), "unknown strategy", path=f"{SENS}?strategy=magic")
    await refused(client, logistic_body(), "timeout_ms", path=f"{SENS}?timeout_ms=0.5")
    await refused(
        client, logistic_body(), "shift", path=f"{SENS}?shift=-1&strategy=finite-difference"
    )
    r = await client.post(
        f"{SENS}?check=finite-difference&shift=1e-6", json=logistic_body(wrt=["r"])
    )
    assert r.status_code == 200, r.text
    assert r.json()["check"]["max_rel_diff"]["r"] < 1e-6
    assert r.json()["bump"]["shift"] == 1e-6


async def test_a_non_finite_result_names_the_sample(client: httpx.AsyncClient) -> None:
    await refused(
        client,
        {
            "expression": "log(x) * a",
            "inputs": {"names": ["x"], "values": [1.0, -2.0]},
            "params": {"a": 1.0},
        },
        "sample 1",
        path=EVAL,
    )


@pytest.mark.parametrize("route", ["sensitivities", "evaluate", "compare"])
async def test_a_body_not_sent_as_json_is_415(client: httpx.AsyncClient, route: str) -> None:
    for headers in ({"content-type": "text/plain"}, {}):
        r = await client.post(f"/v1/expressions/{route}", content=b"{}", headers=headers)
        assert r.status_code == 415, r.text
        assert "application/json" in r.json()["detail"]


async def test_hostile_text_is_refused_and_the_service_answers_next(
    client: httpx.AsyncClient,
) -> None:
    inputs = {"names": ["x", "y"], "values": [[0.5, -1.0], [2.0, 3.0]]}
    for text in [*ESCAPES, "x" * 100_000, "(" * 5000 + "x" + ")" * 5000]:
        for body in (
            {"expression": text, "inputs": inputs, "params": {"a": 1.0, "b": 2.0}},
            {
                "ode": {**ODE, "rhs": text},
                "inputs": inputs,
                "params": {"a": 1.0, "b": 2.0, "t": 1.0},
            },
        ):
            r = await client.post(SENS, json=body)
            assert 400 <= r.status_code < 500 or r.status_code == 200, (text, r.text)
        r = await client.post(EVAL, json=logistic_body())
        assert r.status_code == 200, (text, r.text)


# -- coalescing ---------------------------------------------------------------------------------


async def test_concurrent_requests_for_one_expression_share_launches(
    make_client: ClientFactory,
) -> None:
    rng = random.Random(3)
    async with make_client(max_delay_ms=50) as c:
        await c.post(SENS, json=logistic_body())  # measured and warm
        before = scrape((await c.get("/metrics")).text)

        async def one(i: int) -> None:
            rows = [[rng.uniform(1, 90), rng.uniform(0, 8)] for _ in range(rng.randint(1, 5))]
            r, K = rng.uniform(0.1, 1.0), rng.uniform(100, 200)
            rates: float | list[float] = r if i % 2 else [r] * len(rows)
            resp = await c.post(
                SENS,
                json={
                    "expression": LOGISTIC if i % 3 else "K/(1 + (K-N0)/N0*exp(-r*t))",
                    "inputs": {"names": ["N0", "t"], "values": rows},
                    "params": {"r": rates, "K": K},
                    "wrt": ["r", "K"],
                },
            )
            assert resp.status_code == 200, resp.text
            body = resp.json()
            for j, (n0, t) in enumerate(rows):
                want = cf.logistic_growth(n0, t, r, K)
                assert body["values"][j] == pytest.approx(want["y"], rel=1e-13)
                assert body["derivatives"]["r"][j] == pytest.approx(want["r"], rel=1e-12)
                assert body["derivatives"]["K"][j] == pytest.approx(want["K"], rel=1e-12)

        await asyncio.gather(*(one(i) for i in range(40)))
        after = scrape((await c.get("/metrics")).text)
    launches = value(after, "dydc_batch_requests_count") - value(
        before, "dydc_batch_requests_count"
    )
    requests = value(after, "dydc_batch_requests_sum") - value(before, "dydc_batch_requests_sum")
    assert requests == 40
    assert launches < requests, "no launch held more than one request"
    # one label for every expression: callers' texts do not grow the metrics
    for metric in (
        "dydc_requests_total",
        "dydc_compute_duration_seconds_count",
        "dydc_samples_total",
    ):
        routines = {labels.get("routine") for labels, _ in after[metric]}
        assert "expression" in routines, metric
        assert not any(r and r.startswith("expression-") for r in routines), metric


# -- v2 -----------------------------------------------------------------------------------------

INFER = "/v2/models/expression/infer"


def _tensor(name: str, rows: list[list[float]] | list[float]) -> dict[str, Any]:
    flat = [v for row in rows for v in row] if isinstance(rows[0], list) else rows
    shape = [len(rows), len(rows[0])] if isinstance(rows[0], list) else [len(rows)]
    return {"name": name, "shape": shape, "datatype": "FP64", "data": flat}


def _outputs(body: dict[str, Any]) -> dict[str, list[float]]:
    return {o["name"]: o["data"] for o in body["outputs"]}


async def test_v2_expression_with_a_per_sample_parameter(client: httpx.AsyncClient) -> None:
    rates = [0.5, 0.2, 1.0, 0.05]
    r = await client.post(
        INFER,
        json={
            "parameters": {"expression": LOGISTIC, "inputs": "N0, t", "K": 100.0, "wrt": "r,K,t"},
            "inputs": [_tensor("x", ROWS), _tensor("r", rates)],
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_name"] == "expression"
    assert body["parameters"]["expression"] == LOGISTIC
    out = _outputs(body)
    assert list(out) == ["y", "dy_dr", "dy_dK", "dy_dt"]
    for i, ((n0, t), rate) in enumerate(zip(ROWS, rates, strict=True)):
        want = cf.logistic_growth(n0, t, rate, 100.0)
        assert out["y"][i] == pytest.approx(want["y"], rel=1e-13)
        assert out["dy_dr"][i] == pytest.approx(want["r"], rel=1e-12)
        assert out["dy_dK"][i] == pytest.approx(want["K"], rel=1e-12)


async def test_v2_ode_as_json_matches_logistic_rk4(client: httpx.AsyncClient) -> None:
    params = {"r": 0.7, "K": 120.0, "order": 2, "cross": True, "wrt": "r,K"}
    wanted = await client.post(
        "/v2/models/logistic_rk4/infer", json={"parameters": params, "inputs": [_tensor("x", ROWS)]}
    )
    got = await client.post(
        INFER,
        json={
            "parameters": {"ode": json.dumps(ODE), "inputs": "N0,t", **params},
            "inputs": [
                _tensor("N0", [row[0] for row in ROWS]),
                _tensor("t", [row[1] for row in ROWS]),
            ],
        },
    )
    assert wanted.status_code == got.status_code == 200, got.text
    want, out = _outputs(wanted.json()), _outputs(got.json())
    assert set(out) == set(want)
    for name, column in want.items():
        assert out[name] == pytest.approx(column, rel=1e-12, abs=1e-12), name


async def test_v2_refusals_are_400_in_the_protocol_format(client: httpx.AsyncClient) -> None:
    x = _tensor("x", ROWS)

    async def refused_v2(
        parameters: dict[str, Any], *needles: str, inputs: list[dict[str, Any]] | None = None
    ) -> None:
        r = await client.post(INFER, json={"parameters": parameters, "inputs": inputs or [x]})
        assert r.status_code == 400, r.text
        for needle in needles:
            assert needle in r.json()["error"], r.text

    base = {"expression": LOGISTIC, "inputs": "N0,t", "r": 0.5, "K": 100.0}
    await refused_v2({**base, "expression": "N0.__class__"}, "column 1")
    await refused_v2({**base, "expression": "K * q"}, "'q'", "K, N0, r, t")
    await refused_v2({k: v for k, v in base.items() if k != "inputs"}, "parameters.inputs")
    await refused_v2({k: v for k, v in base.items() if k != "expression"}, "one of expression")
    await refused_v2({**base, "expression": 3}, "parameters.expression")
    await refused_v2({**base, "ode": "{not json"}, "parameters.ode")
    # an ode sent as a JSON object: said to send it as a JSON string, with it as the example
    ode_as_object = {k: v for k, v in base.items() if k != "expression"} | {"ode": ODE}
    await refused_v2(ode_as_object, "parameters.ode is an object, but a v2 parameter is a "
                     "string, a number or a boolean: send the ode object as a JSON string",
                     json.dumps(json.dumps(ODE)), "json.dumps(ode)")
    await refused_v2({**ode_as_object, "K": None}, "as a JSON string", "parameters.K: ")
    await refused_v2({**base, "expression": {"y": "x"}}, "parameters.expression: send the "
                     "expression as a string, or a list of strings")
    # an ode object missing fields, or with one too many: v1's schema names each
    await refused_v2({**base, "ode": "{}"}, "parameters.ode", "rhs: Field required",
                     "time: Field required")
    await refused_v2({**base, "ode": json.dumps({**ODE, "zzz": 1})}, "zzz",
                     "Extra inputs are not permitted")
    await refused_v2({**base, "ode": json.dumps({**ODE, "steps": "many"})}, "steps")
    # a parameter named like one of the model's options is read as the option: said so
    await refused_v2({"expression": "order * x * C", "inputs": "x", "order": 2, "C": 1.0},
                     "unknown name 'order'", "read as this model's options", "rename")
    await refused_v2({"expression": "x * 2", "inputs": "x", "timeout": 5000},
                     "declare at least one parameter", "timeout", "rename",
                     inputs=[_tensor("x", [1.0, 2.0])])
    await refused_v2({**base, "inputs": "N0,t,extra"}, "x")
    await refused_v2({**base, "K": "big"}, "parameters.K")
    r = await client.post(INFER, content=b"{}", headers={"content-type": "text/plain"})
    assert r.status_code == 415, r.text
    r = await client.post(INFER, json={"parameters": base, "inputs": [x]})
    assert r.status_code == 200, r.text


async def test_v2_expression_model_metadata_and_readiness(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GET /v2/models/expression (and /ready, and version 1 of each) as for a routine's model,
    so that a protocol client that asks before it infers finds it; another version is a 404
    in the protocol's format; readiness follows the service's."""
    async with make_client() as c:
        for path in ("/v2/models/expression", "/v2/models/expression/versions/1"):
            r = await c.get(path)
            assert r.status_code == 200, r.text
            assert r.json() == {
                "name": "expression", "versions": ["1"], "platform": "dydc",
                "inputs": [{"name": "x", "datatype": "FP64", "shape": [-1, -1]}],
                "outputs": [{"name": "y", "datatype": "FP64", "shape": [-1]}],
            }
        for path in ("/v2/models/expression/ready", "/v2/models/expression/versions/1/ready"):
            r = await c.get(path)
            assert (r.status_code, r.json()) == (200, {"name": "expression", "ready": True})
        for path in ("/v2/models/expression/versions/2",
                     "/v2/models/expression/versions/2/ready"):
            r = await c.get(path)
            assert r.status_code == 404, r.text
            assert "no version '2'" in r.json()["error"] and "version 1" in r.json()["error"]
        assert (await c.get("/v2/models/linear")).json()["name"] == "linear"  # unshadowed
        body = {"parameters": {"expression": "C * x", "inputs": "x", "C": 2.0},
                "inputs": [_tensor("x", [1.0, 3.0])]}
        r = await c.post("/v2/models/expression/versions/1/infer", json=body)
        assert r.status_code == 200, r.text  # as a Triton client with model_version="1"
        assert _outputs(r.json())["y"] == [2.0, 6.0]
        r = await c.post("/v2/models/expression/versions/2/infer", json=body)
        assert r.status_code == 404 and "no version '2'" in r.json()["error"], r.text
        monkeypatch.setattr(Engine, "readiness", lambda self: "warming up")
        r = await c.get("/v2/models/expression/ready")
        assert (r.status_code, r.json()) == (503, {"name": "expression", "ready": False})


async def test_a_non_finite_sample_is_named_with_its_own_parameter_values(
        client: httpx.AsyncClient) -> None:
    """Per-sample parameters: the 422 shows the failing sample's value of each, not the
    whole list (which may hold a million numbers)."""
    body = {"expression": "sqrt(v) * x", "inputs": {"names": ["x"], "values": [1, 2, 3]},
            "params": {"v": [0.04, 0.09, -1.0]}, "wrt": ["v"]}
    r = await client.post(SENS, json=body)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert "non-finite value for sample 2" in detail and "'v': -1.0" in detail, detail
    assert "0.09" not in detail and "array" not in detail, detail


@pytest.mark.parametrize("strategy", ["auto", "reverse-loop", "finite-difference"])
@pytest.mark.parametrize("expression", [
    "where(log(x) > 0, C, 2 * C)", "where(sqrt(x) < 1, C * x, C)", "C * 1 ** log(x)",
    "C * x ** (0 * log(x))", "where(1 < log(x) < 2, C, C * x)", "C * pow(1, log(x))",
])
async def test_an_undefined_value_inside_the_formula_is_not_hidden(
        client: httpx.AsyncClient, expression: str, strategy: str) -> None:
    """A NaN compares false, and IEEE's pow gives 1 for 1 ** NaN: at x = -1 these formulas,
    undefined there, answered 200 with a number. The sample is named, as for any
    non-finite result; the samples where they are defined are not refused for it."""
    body = {"expression": expression, "inputs": {"names": ["x"], "values": [4.0, -1.0]},
            "params": {"C": 2.0}}
    r = await client.post(f"{SENS}?strategy={strategy}", json=body)
    assert r.status_code == 422, r.text
    assert "non-finite value for sample 1" in r.json()["detail"], r.text
    r = await client.post(EVAL, json=body)
    assert r.status_code == 422 and "sample 1" in r.json()["detail"], r.text
    defined = await client.post(SENS, json={**body, "inputs": {"names": ["x"],
                                                               "values": [4.0]}})
    assert defined.status_code == 200, defined.text


async def test_a_branch_where_does_not_take_may_be_undefined(
        client: httpx.AsyncClient) -> None:
    """What is guarded stays served: where() picks a defined branch for every sample."""
    body = {"expression": "where(x > 0, C * log(x), C * x)",
            "inputs": {"names": ["x"], "values": [math.e, -1.0]}, "params": {"C": 2.0}}
    r = await client.post(SENS, json=body)
    assert r.status_code == 200, r.text
    assert r.json()["values"] == pytest.approx([2.0, -2.0], rel=1e-15)
    assert r.json()["derivatives"]["C"] == pytest.approx([1.0, -1.0], rel=1e-15)


async def test_a_long_formula_is_parsed_off_the_event_loop(
        client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """Parsing and checking cost by the formula's text, not its samples: a body of a long
    formula is prepared in a worker thread (200 new ones of 1,000 nodes, parsed on the loop,
    held /healthz for 0.9 s), a short one where it is; v1 and v2 alike."""
    import threading

    from app.api import expressions as v1_expressions
    from app.api.v2 import expression as v2_expression

    on_the_loop: list[bool] = []

    def watch(cls: Any, name: str) -> None:
        prepare = getattr(cls, name)

        def watched(*args: Any, **kwargs: Any) -> Any:
            on_the_loop.append(threading.current_thread() is threading.main_thread())
            return prepare(*args, **kwargs)

        monkeypatch.setattr(cls, name, watched)

    watch(v1_expressions.ExpressionV1, "_prepare")
    watch(v2_expression.ExpressionV2, "_prepare_expression")
    long = " + ".join(f"C * x ** {k % 7}.25" for k in range(150))  # 2,400 characters
    for text in (long, "C * x"):
        body = {"expression": text, "inputs": {"names": ["x"], "values": [1.0, 2.0]},
                "params": {"C": 2.0}}
        assert (await client.post(SENS, json=body)).status_code == 200
        v2 = await client.post("/v2/models/expression/infer", json={
            "inputs": [{"name": "x", "datatype": "FP64", "shape": [2], "data": [1.0, 2.0]}],
            "parameters": {"expression": text, "inputs": "x", "C": 2.0}})
        assert v2.status_code == 200, v2.text
    assert on_the_loop == [False, False, True, True]


# -- at the bounds, over HTTP ------------------------------------------------------------------

_XS = [0.5, 1.25, -2.0]


async def _send(client: httpx.AsyncClient, route: str, text: str) -> httpx.Response:
    """``text`` of x and C at :data:`_XS` and C = 1.5, to /v1/expressions/``route``."""
    body: dict[str, Any] = {
        "expression": text, "inputs": {"names": ["x"], "values": _XS}, "params": {"C": 1.5}
    }
    if route == "sensitivities":
        body |= {"wrt": ["x", "C"], "dtype": "float64"}
    return await client.post(f"/v1/expressions/{route}", json=body)


async def test_flat_runs_at_the_node_bound_are_not_nesting(client: httpx.AsyncClient) -> None:
    """A sum of 65 terms was once refused as nested more deeply than 64 levels (Python's parser
    nests a run of + to the left). At DYDC_EXPRESSION_MAX_NODES (999 nodes: 499 x and C) a
    flat sum or product is parsed, checked, printed, run and differentiated (no walk recurses
    along it), with the closed form's numbers in float64; one node over names the node bound."""
    runs: dict[str, tuple[Callable[[float], float], ...]] = {
        " + ".join(["x"] * 64) + " + C": (lambda x: 64 * x + 1.5, lambda x: 64.0, lambda x: 1.0),
        " + ".join(["x"] * 499) + " + C": (
            lambda x: 499 * x + 1.5, lambda x: 499.0, lambda x: 1.0
        ),
        "C * " + " * ".join(["x"] * 499): (
            lambda x: 1.5 * x**499, lambda x: 1.5 * 499 * x**498, lambda x: x**499
        ),
        # - and / in the run; x - x + x - ... - x + C is C (each x cancelled exactly)
        " - ".join(["x"] * 2) + " + x - x" * 248 + " + C": (
            lambda x: 1.5, lambda x: 0.0, lambda x: 1.0
        ),
    }
    for text, (f, df_dx, df_dc) in runs.items():
        r = await _send(client, "evaluate", text)
        assert r.status_code == 200, r.text[:300]
        assert r.json()["values"] == pytest.approx([f(x) for x in _XS], rel=1e-13)
        r = await _send(client, "sensitivities", text)
        assert r.status_code == 200, r.text[:300]
        body = r.json()
        assert body["expression"] == text
        assert body["values"] == pytest.approx([f(x) for x in _XS], rel=1e-13)
        assert body["derivatives"]["x"] == pytest.approx([df_dx(x) for x in _XS], rel=1e-12)
        assert body["derivatives"]["C"] == pytest.approx([df_dc(x) for x in _XS], rel=1e-12)
    r = await _send(client, "evaluate", " + ".join(["x"] * 500) + " + C")  # 1001 nodes
    assert r.status_code == 422
    assert "more than 1000 nodes" in r.json()["detail"], r.text
    assert "DYDC_EXPRESSION_MAX_NODES" in r.json()["detail"], r.text


async def test_nesting_over_the_depth_bound_is_refused(client: httpx.AsyncClient) -> None:
    """Parentheses that nest the tree 65 deep (x + (x + (...))) are over
    DYDC_EXPRESSION_MAX_DEPTH (64), named at the column where the bound is crossed."""
    text = "x + (" * 65 + "C" + ")" * 65
    r = await _send(client, "evaluate", text)
    assert r.status_code == 422, r.text
    column = 5 * 63 + 1  # the 64th + is 64 levels deep: its left operand, x, is the 65th
    assert r.json()["detail"] == (
        f"expression: the expression is nested more deeply than 64 levels (at column {column}) "
        "(the bound is DYDC_EXPRESSION_MAX_DEPTH)"
    )


async def test_a_derivative_made_nan_by_another_says_how_to_find_which(
        client: httpx.AsyncClient) -> None:
    """x ** C at x = -2: dy/dx = C x^(C-1) is 12, dy/dC = x^C ln x is not defined; forward
    mode carries both tangents together and 0 x NaN makes dy/dx NaN too, so the refusal names
    dy/dx. It says so, and one wrt at a time answers."""
    body = {"expression": "x ** C", "inputs": {"names": ["x"], "values": [-2.0]},
            "params": {"C": 3.0}}
    r = await client.post(SENS, json={**body, "wrt": ["x", "C"]})
    assert r.status_code == 422, r.text
    assert "ask for one wrt at a time" in r.json()["detail"]
    r = await client.post(SENS, json={**body, "wrt": ["x"]})
    assert r.status_code == 200 and r.json()["derivatives"]["x"] == [12.0], r.text
