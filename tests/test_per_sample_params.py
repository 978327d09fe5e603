"""Per-sample parameters and input features in wrt, through v1 and v2: closed forms for every
sample, every error path, and dynamic batching of requests with different parameters."""

from __future__ import annotations

import asyncio
import random

import httpx
import pytest

from tests.support import ClientFactory, scrape, value
from tests.support import closed_forms as cf

pytestmark = pytest.mark.anyio

SENS = "/v1/routines/{}/sensitivities"
BS = SENS.format("black_scholes_call")
ROWS = [[49.0, 50.0, 0.3846], [100.0, 95.0, 0.5], [80.0, 100.0, 2.0], [120.0, 100.0, 0.25]]
SIGMAS = [0.2, 0.35, 0.6, 0.15]


def _expect(body: dict[str, object], rows: list[list[float]], sigmas: list[float],
            r: float) -> None:
    for i, ((S, K, T), s) in enumerate(zip(rows, sigmas, strict=True)):
        want = cf.black_scholes_greeks(S, K, T, s, r)
        assert body["values"][i] == pytest.approx(want["price"], rel=1e-10)  # type: ignore[index]
        for key, got in body["derivatives"].items():  # type: ignore[attr-defined]
            assert got[i] == pytest.approx(want[key], rel=1e-9, abs=1e-12), (key, i)
        for key, got in body.get("second_derivatives", {}).items():  # type: ignore[attr-defined]
            assert got[i] == pytest.approx(want[key], rel=1e-9, abs=1e-12), (key, i)


@pytest.mark.parametrize("strategy", ["auto", "forward", "forward-dual", "vmap-grad", "jacfwd",
                                      "finite-difference"])
async def test_per_sample_sigma_and_delta_for_every_sample(client: httpx.AsyncClient,
                                                           strategy: str) -> None:
    resp = await client.post(BS + f"?strategy={strategy}", json={
        "inputs": ROWS, "params": {"sigma": SIGMAS, "r": 0.05}, "wrt": ["S", "sigma", "r"]})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["params"] == {"sigma": SIGMAS, "r": 0.05}
    assert list(body["derivatives"]) == ["S", "sigma", "r"]
    if strategy == "finite-difference":  # first differences: about 1e-10 relative
        for i, ((S, K, T), s) in enumerate(zip(ROWS, SIGMAS, strict=True)):
            want = cf.black_scholes_greeks(S, K, T, s, 0.05)
            for key in ("S", "sigma", "r"):
                assert body["derivatives"][key][i] == pytest.approx(want[key], rel=1e-7)
    else:
        _expect(body, ROWS, SIGMAS, 0.05)


async def test_greeks_in_one_call(client: httpx.AsyncClient) -> None:
    """The README's example: delta, gamma, vega and vanna, each option with its own sigma."""
    resp = await client.post(BS, json={"inputs": ROWS, "params": {"sigma": SIGMAS},
                                       "wrt": ["S", "sigma"], "order": 2, "cross": True})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert list(body["second_derivatives"]) == ["S,S", "S,sigma", "sigma,sigma"]
    _expect(body, ROWS, SIGMAS, 0.05)


async def test_input_sensitivity_of_every_feature(client: httpx.AsyncClient) -> None:
    rows = [[2.0, 0.5], [1.0, 3.0], [5.0, 1.25]]
    resp = await client.post(SENS.format("exponential_decay"), json={
        "inputs": rows, "params": {"k": 0.7}, "wrt": ["y0", "t", "k"]})
    assert resp.status_code == 200, resp.text
    d = resp.json()["derivatives"]
    for i, (y0, t) in enumerate(rows):
        want = cf.exponential_decay(y0, t, 0.7)
        for key in ("y0", "t", "k"):
            assert d[key][i] == pytest.approx(want[key], rel=1e-12), (key, i)


async def test_default_wrt_is_still_every_parameter(client: httpx.AsyncClient) -> None:
    resp = await client.post(BS, json={"inputs": ROWS, "params": {"sigma": SIGMAS}})
    assert list(resp.json()["derivatives"]) == ["sigma", "r"]


@pytest.mark.parametrize(("body", "needles"), [
    ({"inputs": ROWS, "params": {"sigma": SIGMAS[:3]}},
     ["params.sigma", "3 values", "4 samples"]),
    ({"inputs": ROWS, "params": {"sigma": [0.2, 0.3, "x", 0.1]}}, ["params.sigma[2]", '"x"']),
    ({"inputs": ROWS, "params": {"sigma": [0.2, 0.3, True, 0.1]}}, ["params.sigma[2]"]),
    ({"inputs": ROWS, "params": {"sigma": [0.2, 0.3, 0.1, -0.5]}},
     ["params.sigma[3]", "-0.5", "bounds"]),
    ({"inputs": ROWS, "params": {"sigma": [[0.2], [0.3], [0.1], [0.5]]}}, ["params.sigma[0]"]),
    ({"inputs": ROWS, "params": {"sigma": "0.2"}}, ["params.sigma", '"0.2"']),
    ({"inputs": ROWS, "wrt": ["S", "vol"]}, ["'vol'", "sigma, r", "S, K, T"]),
    ({"inputs": ROWS, "order": 3}, ["order", "1 or 2"]),
    ({"inputs": ROWS, "order": "2"}, ["order"]),
    ({"inputs": ROWS, "cross": True}, ["cross", "order"]),
])
async def test_bad_per_sample_and_wrt_requests_are_422_naming_the_element(
        client: httpx.AsyncClient, body: dict[str, object], needles: list[str]) -> None:
    resp = await client.post(BS, json=body)
    assert resp.status_code == 422, resp.text
    for needle in needles:
        assert needle in resp.json()["detail"], (needle, resp.json()["detail"])


async def test_a_non_finite_element_is_named(client: httpx.AsyncClient) -> None:
    content = b'{"inputs": [1, 2, 3], "params": {"C": [1.0, 1e999, 2.0]}}'
    resp = await client.post(SENS.format("linear"), content=content,
                             headers={"content-type": "application/json"})
    assert resp.status_code == 422, resp.text
    assert "params.C[1]" in resp.json()["detail"] and "finite" in resp.json()["detail"]


@pytest.mark.parametrize("strategy", ["reverse-loop", "reverse-batched", "jacrev"])
async def test_shared_only_strategies_refuse_per_sample_values_and_inputs(
        client: httpx.AsyncClient, strategy: str) -> None:
    for body in ({"inputs": ROWS, "params": {"sigma": SIGMAS}},
                 {"inputs": ROWS, "wrt": ["S"]}):
        resp = await client.post(BS + f"?strategy={strategy}", json=body)
        assert resp.status_code == 422, resp.text
        detail = resp.json()["detail"]
        assert "shared parameters only" in detail and "forward" in detail


async def test_evaluate_takes_per_sample_parameters(client: httpx.AsyncClient) -> None:
    resp = await client.post("/v1/routines/black_scholes_call/evaluate",
                             json={"inputs": ROWS, "params": {"sigma": SIGMAS}})
    assert resp.status_code == 200, resp.text
    for i, ((S, K, T), s) in enumerate(zip(ROWS, SIGMAS, strict=True)):
        assert resp.json()["values"][i] == pytest.approx(
            cf.black_scholes_greeks(S, K, T, s, 0.05)["price"], rel=1e-12)


async def test_requests_with_per_sample_parameters_and_order_2_coalesce(
        make_client: ClientFactory) -> None:
    """Concurrent requests, each with its own sigmas (some shared, some per sample) and
    order 2, held behind a busy worker: they share launches and each gets its own answer."""
    rng = random.Random(12)
    async with make_client(max_delay_ms=50) as c:
        before = scrape((await c.get("/metrics")).text)

        async def one(i: int) -> None:
            rows = [[rng.uniform(50, 150), rng.uniform(50, 150), rng.uniform(0.1, 3)]
                    for _ in range(rng.randint(1, 6))]
            r = rng.uniform(-0.02, 0.1)
            sigmas = [rng.uniform(0.05, 0.8) for _ in rows]
            sigma: float | list[float] = sigmas if i % 2 else sigmas[0]
            order = 1 if i % 3 == 0 else 2  # orders never share a launch
            resp = await c.post(BS, json={"inputs": rows, "params": {"sigma": sigma, "r": r},
                                          "wrt": ["S", "sigma"], "order": order,
                                          "cross": order == 2})
            assert resp.status_code == 200, resp.text
            body = resp.json()
            assert list(body.get("second_derivatives", {"none": 0})) == (
                ["S,S", "S,sigma", "sigma,sigma"] if order == 2 else ["none"])
            _expect(body, rows, sigmas if i % 2 else [sigmas[0]] * len(rows), r)

        await asyncio.gather(*(one(i) for i in range(60)))
        after = scrape((await c.get("/metrics")).text)
    launches = (value(after, "dydc_batch_requests_count")
                - value(before, "dydc_batch_requests_count"))
    requests = value(after, "dydc_batch_requests_sum") - value(before, "dydc_batch_requests_sum")
    assert requests == 60
    assert launches < requests, "no launch held more than one request"


async def test_a_large_per_sample_request_runs_in_chunks(make_client: ClientFactory) -> None:
    n = 50
    rows = [[1.0 + i, 0.5] for i in range(n)]
    ks = [0.01 * (i + 1) for i in range(n)]
    async with make_client(max_batch_samples=16, max_queue_samples=64) as c:
        resp = await c.post(SENS.format("exponential_decay"), json={
            "inputs": rows, "params": {"k": ks}, "wrt": ["k"], "order": 2})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    for i, ((y0, t), k) in enumerate(zip(rows, ks, strict=True)):
        want = cf.exponential_decay(y0, t, k)
        assert body["derivatives"]["k"][i] == pytest.approx(want["k"], rel=1e-12)
        assert body["second_derivatives"]["k,k"][i] == pytest.approx(want["k,k"], rel=1e-12)


# -- v2 ----------------------------------------------------------------------------------------


def _column(name: str, data: list[float]) -> dict[str, object]:
    return {"name": name, "datatype": "FP64", "shape": [len(data)], "data": data}


async def test_v2_per_sample_sigma_order_2_and_delta(client: httpx.AsyncClient) -> None:
    inputs = [_column(f, [row[j] for row in ROWS]) for j, f in enumerate(("S", "K", "T"))]
    resp = await client.post("/v2/models/black_scholes_call/infer", json={
        "inputs": [*inputs, _column("sigma", SIGMAS)],
        "parameters": {"wrt": "S,sigma", "order": 2, "cross": True}})
    assert resp.status_code == 200, resp.text
    outputs = {o["name"]: o["data"] for o in resp.json()["outputs"]}
    assert list(outputs) == ["y", "dy_dS", "dy_dsigma", "d2y_dS_dS", "d2y_dS_dsigma",
                             "d2y_dsigma_dsigma"]
    _expect({"values": outputs["y"],
             "derivatives": {"S": outputs["dy_dS"], "sigma": outputs["dy_dsigma"]},
             "second_derivatives": {"S,S": outputs["d2y_dS_dS"],
                                    "S,sigma": outputs["d2y_dS_dsigma"],
                                    "sigma,sigma": outputs["d2y_dsigma_dsigma"]}},
            ROWS, SIGMAS, 0.05)


async def test_v2_picks_one_second_derivative(client: httpx.AsyncClient) -> None:
    resp = await client.post("/v2/models/exponential_decay/infer", json={
        "inputs": [_column("y0", [2.0, 1.0]), _column("t", [0.5, 3.0])],
        "parameters": {"k": 0.7, "order": 2}, "outputs": [{"name": "d2y_dk_dk"}]})
    assert resp.status_code == 200, resp.text
    (out,) = resp.json()["outputs"]
    assert out["name"] == "d2y_dk_dk"
    assert out["data"] == pytest.approx([cf.exponential_decay(2.0, 0.5, 0.7)["k,k"],
                                         cf.exponential_decay(1.0, 3.0, 0.7)["k,k"]], rel=1e-12)


@pytest.mark.parametrize(("parameters", "extra", "needle"), [
    ({"order": "2"}, [], "parameters.order"),
    ({"order": 2, "cross": "yes"}, [], "parameters.cross"),
    ({"order": 5}, [], "order"),
    ({}, [_column("k", [0.5, 0.6, 0.7])], "input k (a parameter with one value per sample)"),
    ({"order": 2, "strategy": "forward-dual"}, [], "cannot compute second derivatives"),
    # one parameter twice: per sample as a tensor and shared in parameters
    ({"k": 0.7}, [_column("k", [0.5, 0.6])], "k is sent both as an input tensor"),
])
async def test_v2_errors_are_400_saying_what_to_change(
        client: httpx.AsyncClient, parameters: dict[str, object], extra: list[object],
        needle: str) -> None:
    resp = await client.post("/v2/models/exponential_decay/infer", json={
        "inputs": [_column("y0", [2.0, 1.0]), _column("t", [0.5, 3.0]), *extra],
        "parameters": parameters})
    assert resp.status_code == 400, resp.text
    assert needle in resp.json()["error"]


@pytest.mark.parametrize(("sigma", "needle"), [
    ([0.2, -0.1, 0.3], "params.sigma[1] = -0.1 is outside its bounds [0.0, inf]"),
    (-0.1, "params.sigma = -0.1 is outside its bounds [0.0, inf]"),
])
async def test_a_parameter_outside_its_bounds_is_named_with_its_sample(
        client: httpx.AsyncClient, sigma: object, needle: str) -> None:
    body = {"inputs": [[100.0, 100.0, 1.0]] * 3, "params": {"sigma": sigma, "r": 0.05}}
    r = await client.post("/v1/routines/black_scholes_call/sensitivities", json=body)
    assert r.status_code == 422, r.text
    assert needle in r.json()["detail"], r.json()["detail"]
