"""The v1 contract through HTTP: shapes, values and derivatives against closed forms."""

from __future__ import annotations

import asyncio
import math
import random

import httpx
import numpy as np
import pytest

from app.engine import STRATEGIES

pytestmark = pytest.mark.anyio

FORUM = {"inputs": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], "params": {"C": -5.0}, "wrt": ["C"]}
ROUTINES = {"linear", "exponential_decay", "logistic_growth", "damped_oscillator",
            "black_scholes_call", "logistic_rk4", "softmax", "gamma_survival"}


async def test_forum_example_verbatim(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/routines/linear/sensitivities?strategy=auto", json=FORUM)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["derivatives"] == {"C": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]}
    assert body["values"] == [-5.0 * i for i in range(10)]
    assert body["strategy"] == "forward"
    assert (body["routine"], body["dtype"], body["device"], body["n"]) == (
        "linear", "float64", "cpu", 10)
    assert set(body["timing_ms"]) == {"queue", "compute", "total"}
    assert body["timing_ms"]["total"] >= body["timing_ms"]["compute"] >= 0


@pytest.mark.parametrize("strategy", [s for s in STRATEGIES if s != "auto"])
async def test_forum_example_every_strategy(client: httpx.AsyncClient, strategy: str) -> None:
    r = await client.post(f"/v1/routines/linear/sensitivities?strategy={strategy}", json=FORUM)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["strategy"] == strategy
    tol = 1e-9 if strategy == "finite-difference" else 0.0
    assert body["derivatives"]["C"] == pytest.approx(list(range(10)), abs=tol)


async def test_default_strategy_is_auto_and_wrt_defaults_to_all(client: httpx.AsyncClient) -> None:
    t = [0.0, 0.5, 1.0, 2.0]
    r = await client.post("/v1/routines/damped_oscillator/sensitivities",
                          json={"inputs": t, "params": {"gamma": 0.3, "omega": 2.0}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["strategy"] == "forward"
    assert list(body["derivatives"]) == ["gamma", "omega"]
    for i, ti in enumerate(t):
        y = math.exp(-0.3 * ti) * math.cos(2 * ti)
        assert body["values"][i] == pytest.approx(y, rel=1e-12, abs=1e-15)
        assert body["derivatives"]["gamma"][i] == pytest.approx(-ti * y, rel=1e-12, abs=1e-15)
        assert body["derivatives"]["omega"][i] == pytest.approx(
            -ti * math.exp(-0.3 * ti) * math.sin(2 * ti), rel=1e-12, abs=1e-15)


async def test_rows_and_several_outputs(client: httpx.AsyncClient) -> None:
    z = [[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]]
    r = await client.post("/v1/routines/softmax/sensitivities", json={"inputs": z,
                                                                      "params": {"T": 0.5}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["outputs"] == ["p1", "p2", "p3"]
    for row, p, dp in zip(z, body["values"], body["derivatives"]["T"], strict=True):
        e = [math.exp(v / 0.5) for v in row]
        ref = [v / sum(e) for v in e]
        mean = sum(pi * zi for pi, zi in zip(ref, row, strict=True))
        assert p == pytest.approx(ref, rel=1e-12)
        expected = [-(pi / 0.25) * (zi - mean) for pi, zi in zip(ref, row, strict=True)]
        assert dp == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("strategy", ["auto", "vmap-grad", "reverse-loop", "jacrev"])
async def test_gamma_survival_at_lam_t_zero_has_its_limits(client: httpx.AsyncClient,
                                                            strategy: str) -> None:
    """Q(a, lam t) = 1 at t = 0 and at the bound lam = 0; dQ/dlam = -t^a lam^(a-1) / Gamma(a)
    there: 0 at t = 0 for every a, -t at lam = 0 for a = 1, 0 for a > 1 (igammac's own
    derivative is NaN at 0 for a = 1, and times t = 0 for a < 1)."""
    url = f"/v1/routines/gamma_survival/sensitivities?strategy={strategy}"
    at_t0 = await client.post(url, json={"inputs": [[0.5, 0.0], [1.0, 0.0], [2.0, 0.0],
                                                    [2.0, 1.5]], "params": {"lam": 0.8}})
    assert at_t0.status_code == 200, at_t0.text
    body = at_t0.json()
    assert body["values"][:3] == [1.0, 1.0, 1.0]
    assert body["derivatives"]["lam"][:3] == [0.0, 0.0, 0.0]
    assert body["derivatives"]["lam"][3] == pytest.approx(
        -1.5 * 1.2 * math.exp(-1.2), rel=1e-12)  # the other sample as away from 0
    at_bound = await client.post(url, json={"inputs": [[1.0, 0.3], [2.0, 0.3]],
                                            "params": {"lam": 0.0}})
    assert at_bound.status_code == 200, at_bound.text
    assert at_bound.json()["values"] == [1.0, 1.0]
    assert at_bound.json()["derivatives"]["lam"] == [-0.3, 0.0]
    infinite = await client.post(url, json={"inputs": [[0.5, 0.3]], "params": {"lam": 0.0}})
    assert infinite.status_code == 422, infinite.text  # -t^a lam^(a - 1): -inf
    assert "non-finite dy/dlam for sample 0" in infinite.json()["detail"]
    if strategy in ("auto", "vmap-grad"):  # order 2: the series' second term counts at a = 1
        second = await client.post(url, json={"inputs": [[1.0, 0.3], [2.0, 0.3]],
                                              "params": {"lam": 0.0}, "order": 2})
        assert second.status_code == 200, second.text
        lam_lam = second.json()["second_derivatives"]["lam,lam"]  # +t^2 at a = 1, -t^2 at 2
        assert lam_lam == pytest.approx([0.09, -0.09], rel=1e-15)
        in_t = await client.post(url, json={"inputs": [[1.0, 0.0], [2.0, 0.0]],
                                            "params": {"lam": 0.8}, "wrt": ["t"], "order": 2})
        assert in_t.status_code == 200, in_t.text
        assert in_t.json()["derivatives"]["t"] == [-0.8, 0.0]
        assert in_t.json()["second_derivatives"]["t,t"] == pytest.approx([0.64, -0.64],
                                                                          rel=1e-15)
    no_shape = await client.post(url, json={"inputs": [[0.0, 0.0]], "params": {"lam": 0.8}})
    assert no_shape.status_code == 422, no_shape.text  # a = 0: no Gamma distribution
    assert "non-finite value for sample 0" in no_shape.json()["detail"]


async def test_a_bump_outside_the_domain_says_how_to_bump(client: httpx.AsyncClient) -> None:
    """Black-Scholes at T = 0 is valid, but T - h is not: finite differences say to bump
    one side (which then answers r K, the limit); reverse mode, whose shared derivative one
    sample's NaN poisons for all, says that the sample named may not be the one at fault."""
    sens = "/v1/routines/black_scholes_call/sensitivities"
    body = {"inputs": [[100, 95, 0.0]], "params": {"sigma": 0.2, "r": 0.05}, "wrt": ["T"]}
    for query in ("?strategy=finite-difference", "?check=finite-difference"):
        r = await client.post(sens + query, json=body)
        assert r.status_code == 422, r.text
        assert "bump one side only (scheme=forward or scheme=backward)" in r.json()["detail"]
    one_sided = await client.post(sens + "?strategy=finite-difference&scheme=forward",
                                  json=body)
    assert one_sided.status_code == 200, one_sided.text
    assert one_sided.json()["derivatives"]["T"][0] == pytest.approx(0.05 * 95, rel=1e-4)
    poisoned = await client.post(
        "/v1/routines/gamma_survival/sensitivities?strategy=reverse-loop",
        json={"inputs": [[2.0, 1.5], [0.5, 0.3]], "params": {"lam": 0.0}})
    assert poisoned.status_code == 422, poisoned.text
    assert "the sample at fault may be another" in poisoned.json()["detail"]


async def test_auto_falls_back_to_reverse_mode(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/routines/gamma_survival/sensitivities",
                          json={"inputs": [[2.0, 1.5]], "params": {"lam": 0.8}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["strategy"] == "vmap-grad"
    a, t, lam = 2.0, 1.5, 0.8
    assert body["derivatives"]["lam"][0] == pytest.approx(
        -t * (lam * t) ** (a - 1) * math.exp(-lam * t) / math.gamma(a), rel=1e-12)
    forced = await client.post("/v1/routines/gamma_survival/sensitivities?strategy=forward",
                               json={"inputs": [[2.0, 1.5]]})
    assert forced.status_code == 422
    assert "strategy=auto" in forced.json()["detail"]
    assert ".;" not in forced.json()["detail"]  # torch's full stop, then the advice
    assert "or finite-difference where reverse mode lacks a formula too" in forced.json()[
        "detail"]
    # igammac has no derivative in its first argument in either mode: bumping has none to need
    for strategy in ("auto", "vmap-grad"):
        r = await client.post(f"/v1/routines/gamma_survival/sensitivities?strategy={strategy}",
                              json={"inputs": [[2.0, 1.5]], "wrt": ["a"]})
        assert r.status_code == 422, r.text
        assert "use strategy=finite-difference" in r.json()["detail"], r.text
    r = await client.post("/v1/routines/gamma_survival/sensitivities?strategy=finite-difference",
                          json={"inputs": [[2.0, 1.5]], "wrt": ["a"]})
    assert r.status_code == 200, r.text


async def test_float64_round_trips_exactly(client: httpx.AsyncClient) -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(size=257) * 10.0 ** rng.integers(-300, 300, size=257)
    c = 1.0 / 3.0
    r = await client.post("/v1/routines/linear/evaluate",
                          json={"inputs": x.tolist(), "params": {"C": c}})
    assert r.status_code == 200, r.text
    assert r.json()["values"] == (c * x).tolist()


async def test_float32(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/routines/exponential_decay/sensitivities",
                          json={"inputs": [[2.0, 0.5], [1.0, 3.0]], "params": {"k": 0.7},
                                "dtype": "float32"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dtype"] == "float32"
    for (y0, t), d in zip([[2.0, 0.5], [1.0, 3.0]], body["derivatives"]["k"], strict=True):
        assert d == pytest.approx(-t * y0 * math.exp(-0.7 * t), rel=1e-6)


async def test_evaluate_gives_values_only(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/routines/linear/evaluate", json={"inputs": [1, 2],
                                                                 "params": {"C": 3}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["values"] == [3.0, 6.0]
    assert "derivatives" not in body and "strategy" not in body
    # the same body as /sensitivities is accepted: wrt is ignored
    r = await client.post("/v1/routines/linear/evaluate", json=FORUM)
    assert r.status_code == 200 and r.json()["values"][1] == -5.0


async def test_routine_catalogue(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/routines")
    assert r.status_code == 200
    infos = {i["name"]: i for i in r.json()["routines"]}
    assert set(infos) == ROUTINES
    bs = (await client.get("/v1/routines/black_scholes_call")).json()
    assert bs == infos["black_scholes_call"]
    assert bs["inputs"] == ["S", "K", "T"] and bs["outputs"] == ["price"]
    assert [p["name"] for p in bs["params"]] == ["sigma", "r"]
    sigma = bs["params"][0]
    assert sigma["default"] == 0.2 and sigma["bounds"] == [0.0, None] and sigma["description"]
    assert "bounds" not in bs["params"][1]
    lin = infos["linear"]
    assert lin["params"] == [{"name": "C", "default": 1.0, "description": "slope"}]


async def test_strategy_catalogue(client: httpx.AsyncClient) -> None:
    body = (await client.get("/v1/strategies")).json()
    assert body["default"] == "auto"
    by_name = {s["name"]: s for s in body["strategies"]}
    assert set(by_name) == {"auto", "forward", "forward-dual", "reverse-loop", "reverse-batched",
                            "vmap-grad", "jacrev", "jacfwd", "finite-difference"}
    assert by_name["reverse-loop"]["cap"] == 1000
    assert by_name["reverse-loop"]["cap_setting"] == "DYDC_REVERSE_LOOP_MAX_N"
    assert by_name["forward"]["cap"] is None and by_name["forward"]["mode"] == "forward"
    assert by_name["vmap-grad"]["mode"] == "reverse"
    assert all(s["cost"] for s in body["strategies"])


async def test_concurrent_requests_each_get_their_own_answer(client: httpx.AsyncClient) -> None:
    rng = random.Random(3)
    cases = [(rng.uniform(-5, 5), [rng.uniform(-10, 10) for _ in range(rng.randint(1, 40))])
             for _ in range(60)]

    async def one(c: float, x: list[float]) -> None:
        r = await client.post("/v1/routines/linear/sensitivities",
                              json={"inputs": x, "params": {"C": c}})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["values"] == [c * v for v in x]
        assert body["derivatives"]["C"] == x

    await asyncio.gather(*(one(c, x) for c, x in cases))


async def test_openapi_documents_the_computation_routes(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    sens = doc["paths"]["/v1/routines/{name}/sensitivities"]["post"]
    assert [p["name"] for p in sens["parameters"]] == [
        "name", "strategy", "timeout_ms", "shift", "shift_type", "scheme", "check"]
    assert set(sens["parameters"][1]["schema"]["enum"]) == set(STRATEGIES)
    body = sens["requestBody"]["content"]["application/json"]["schema"]
    assert {"inputs", "params", "wrt", "dtype", "order", "cross"} <= set(body["properties"])
    compare = doc["paths"]["/v1/routines/{name}/compare"]["post"]
    assert [p["name"] for p in compare["parameters"]] == [
        "name", "timeout_ms", "shift", "shift_type", "scheme"]
    evaluate = doc["paths"]["/v1/routines/{name}/evaluate"]["post"]
    assert [p["name"] for p in evaluate["parameters"]] == ["name", "timeout_ms"]
    assert (await client.get("/docs")).status_code == 200
