"""POST /v1/routines/{name}/compare: every strategy side by side, skipped and failed rows with
their reasons, never past a cap, and the reference's numbers."""

from __future__ import annotations

import httpx
import pytest

from app.engine import STRATEGIES
from tests.support import ClientFactory
from tests.support import closed_forms as cf

pytestmark = pytest.mark.anyio

COMPARE = "/v1/routines/{}/compare"
ROWS = [[49.0, 50.0, 0.3846], [100.0, 95.0, 0.5]]
ROW_KEYS = {"strategy", "status", "reason", "time_ms", "max_abs_diff", "max_rel_diff"}


def _rows(body: dict[str, object]) -> dict[str, dict[str, object]]:
    rows = body["strategies"]
    assert isinstance(rows, list)
    for row in rows:
        assert set(row) == ROW_KEYS
    return {row["strategy"]: row for row in rows}


async def test_order_1_runs_every_strategy_and_they_agree(client: httpx.AsyncClient) -> None:
    resp = await client.post(COMPARE.format("black_scholes_call"),
                             json={"inputs": ROWS, "params": {"sigma": 0.2, "r": 0.05}})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert {k: body[k] for k in ("routine", "n", "order", "reference")} == {
        "routine": "black_scholes_call", "n": 2, "order": 1, "reference": "forward"}
    rows = _rows(body)
    assert set(rows) == set(STRATEGIES) - {"auto"}
    for name, row in rows.items():
        assert row["status"] == "ok", row
        assert row["reason"] is None and row["time_ms"] > 0
        assert list(row["max_abs_diff"]) == ["sigma", "r"]
        tol = 1e-8 if name == "finite-difference" else 1e-12
        assert all(v < tol for v in row["max_rel_diff"].values()), row
    assert rows["forward"]["max_abs_diff"] == {"sigma": 0.0, "r": 0.0}
    for i, (S, K, T) in enumerate(ROWS):
        want = cf.black_scholes_greeks(S, K, T, 0.2, 0.05)
        assert body["values"][i] == pytest.approx(want["price"], rel=1e-12)
        assert body["derivatives"]["sigma"][i] == pytest.approx(want["sigma"], rel=1e-12)
    assert "second_derivatives" not in body


async def test_order_2_with_per_sample_sigma_skips_with_reasons(
        client: httpx.AsyncClient) -> None:
    resp = await client.post(COMPARE.format("black_scholes_call"), json={
        "inputs": ROWS, "params": {"sigma": [0.2, 0.4]}, "wrt": ["S", "sigma"], "order": 2,
        "cross": True})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    rows = _rows(body)
    keys = ["S", "sigma", "S,S", "S,sigma", "sigma,sigma"]
    for name in ("forward", "jacfwd", "vmap-grad", "finite-difference"):
        assert rows[name]["status"] == "ok" and list(rows[name]["max_abs_diff"]) == keys
    assert rows["forward-dual"]["status"] == "skipped"
    assert "second derivatives" in rows["forward-dual"]["reason"]
    for name in ("reverse-loop", "reverse-batched", "jacrev"):
        assert rows[name]["status"] == "skipped" and rows[name]["time_ms"] is None
        assert rows[name]["max_abs_diff"] == {}
    assert list(body["second_derivatives"]) == ["S,S", "S,sigma", "sigma,sigma"]
    for i, ((S, K, T), s) in enumerate(zip(ROWS, [0.2, 0.4], strict=True)):
        want = cf.black_scholes_greeks(S, K, T, s, 0.05)
        for key in keys[2:]:
            assert body["second_derivatives"][key][i] == pytest.approx(want[key], rel=1e-10)


async def test_per_sample_skips_the_shared_only_strategies(client: httpx.AsyncClient) -> None:
    resp = await client.post(COMPARE.format("exponential_decay"), json={
        "inputs": [[2.0, 0.5], [1.0, 3.0]], "wrt": ["y0"]})
    rows = _rows(resp.json())
    for name in ("reverse-loop", "reverse-batched", "jacrev"):
        assert rows[name]["status"] == "skipped"
        assert "shared parameters only" in rows[name]["reason"]
    assert rows["forward-dual"]["status"] == "ok"


async def test_over_a_cap_is_skipped_not_run(make_client: ClientFactory) -> None:
    async with make_client(reverse_loop_max_n=3, jacrev_max_n=3) as c:
        resp = await c.post(COMPARE.format("linear"), json={"inputs": [1, 2, 3, 4, 5]})
    rows = _rows(resp.json())
    assert rows["reverse-loop"]["status"] == "skipped"
    assert "DYDC_REVERSE_LOOP_MAX_N" in rows["reverse-loop"]["reason"]
    assert rows["jacrev"]["status"] == "skipped" and "DYDC_JACREV_MAX_N" in rows["jacrev"]["reason"]
    assert rows["reverse-batched"]["status"] == "ok"


async def test_a_strategy_that_fails_is_a_failed_row(client: httpx.AsyncClient) -> None:
    """gamma_survival's igammac has no forward formula: forward mode fails, and the first
    strategy that succeeded is the reference."""
    resp = await client.post(COMPARE.format("gamma_survival"),
                             json={"inputs": [[2.0, 1.5], [3.0, 0.5]], "params": {"lam": 0.8}})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    rows = _rows(body)
    assert rows["forward"]["status"] == "failed" and "forward" in rows["forward"]["reason"]
    assert rows["forward"]["time_ms"] is None
    assert body["reference"] == "reverse-loop" and rows["vmap-grad"]["status"] == "ok"
    assert len(body["values"]) == 2


async def test_compare_refuses_what_sensitivities_refuses(client: httpx.AsyncClient) -> None:
    for body, needle in (({"inputs": ROWS, "params": {"sigma": [0.2]}}, "params.sigma"),
                         ({"inputs": ROWS, "order": 4}, "order"),
                         ({"inputs": ROWS, "wrt": ["nope"]}, "'nope'")):
        resp = await client.post(COMPARE.format("black_scholes_call"), json=body)
        assert resp.status_code == 422 and needle in resp.json()["detail"], resp.text
    resp = await client.post(COMPARE.format("nope"), json={"inputs": [1]})
    assert resp.status_code == 404


async def test_the_bump_settings_apply_to_finite_differences(client: httpx.AsyncClient) -> None:
    resp = await client.post(COMPARE.format("exponential_decay") + "?shift=0.1&scheme=forward",
                             json={"inputs": [[2.0, 0.5]], "params": {"k": 0.7}})
    rows = _rows(resp.json())
    assert rows["finite-difference"]["max_rel_diff"]["k"] > 1e-3  # the large bump shows
    assert rows["forward-dual"]["max_rel_diff"]["k"] < 1e-12


async def test_strategies_say_what_they_support(client: httpx.AsyncClient) -> None:
    listed = {s["name"]: s for s in (await client.get("/v1/strategies")).json()["strategies"]}
    order2 = {name for name, s in listed.items() if s["order2"]}
    per_sample = {name for name, s in listed.items() if s["per_sample_params"]}
    assert order2 == {"auto", "forward", "jacfwd", "vmap-grad", "finite-difference"}
    assert per_sample == set(STRATEGIES) - {"reverse-loop", "reverse-batched", "jacrev"}
    assert all({"mode", "cost", "cap", "cap_setting", "batchable"} <= set(s)
               for s in listed.values())
    routine = (await client.get("/v1/routines/black_scholes_call")).json()
    assert [p["name"] for p in routine["params"]] == ["sigma", "r"]
    assert routine["inputs"] == ["S", "K", "T"]


async def test_max_rel_diff_is_null_where_the_reference_is_zero_everywhere(
        client: httpx.AsyncClient) -> None:
    """d2y/dC2 of C x is 0 for every sample: a relative difference has no value there, so it
    is null and max_abs_diff says how far each strategy is; dy/dC = x is relative as ever."""
    resp = await client.post(COMPARE.format("linear"), json={"inputs": [1, 2, 3], "order": 2})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["second_derivatives"]["C,C"] == [0.0, 0.0, 0.0]
    assert body["derivatives"]["C"] == [1.0, 2.0, 3.0]
    ok = {name: row for name, row in _rows(body).items() if row["status"] == "ok"}
    assert "finite-difference" in ok and "forward" in ok
    for name, row in ok.items():
        assert row["max_rel_diff"]["C,C"] is None, row
        assert row["max_abs_diff"]["C,C"] < 1e-6, row
        assert 0 <= row["max_rel_diff"]["C"] < (1e-8 if name == "finite-difference" else 1e-15)
