"""The scenarios answer in tensor form (app.api.tensor_answer): ``Accept:
application/vnd.dydc.tensors`` gets the JSON document with its arrays as raw little-endian
tensors after a JSON header, the same numbers bit for bit; any other Accept gets JSON;
errors stay problem+json; ``totals_only`` leaves the per-sample arrays out."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from tests.support import ClientFactory
from tests.support import closed_forms as cf
from tests.support.problems import assert_problem

pytestmark = pytest.mark.anyio

SCEN = "/v1/routines/black_scholes_call/scenarios"
TENSORS = "application/vnd.dydc.tensors"
BOOK = [[49.0, 50.0, 0.3846], [100.0, 95.0, 0.5], [80.0, 100.0, 2.0], [120.0, 100.0, 1.0]]
BODY: dict[str, Any] = {
    "inputs": BOOK, "params": {"sigma": 0.2, "r": 0.05}, "explain": True, "order": 2,
    "cross": True,
    "scenarios": {"shifts": {"sigma": {"type": "relative", "values": [-0.1, 0, 0.1]},
                             "r": {"type": "absolute", "values": [-0.01, 0.01]}}}}
PER_SAMPLE = ("values", "pnl", "delta_pnl", "gamma_pnl", "unexplained")


def decode(r: httpx.Response) -> Any:
    """The tensor form back to a document of float arrays, written here from the format's
    description (not the client's reader)."""
    assert r.headers["content-type"] == TENSORS
    length = int(r.headers["inference-header-content-length"])
    header = orjson.loads(r.content[:length])
    offset = length

    def walk(value: Any) -> Any:
        nonlocal offset
        if isinstance(value, dict) and set(value) == {"datatype", "shape", "parameters"}:
            assert value["datatype"] == "FP64"
            size = value["parameters"]["binary_data_size"]
            array = np.frombuffer(r.content[offset:offset + size], dtype="<f8")
            offset += size
            return array.reshape(value["shape"])
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    doc = walk(header)
    assert offset == len(r.content)  # every byte accounted for
    return doc


def same(a: Any, b: Any) -> None:
    """Equal documents, numbers bit for bit (arrays against JSON lists)."""
    if isinstance(b, dict):
        assert isinstance(a, dict) and list(a) == list(b)
        for k in b:
            if k != "timing_ms":
                same(a[k], b[k])
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, np.asarray(b, dtype=np.float64), strict=False)
    elif isinstance(b, list):
        assert isinstance(a, list) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            same(x, y)
    else:
        assert a == b


async def test_the_tensor_form_carries_the_json_answers_numbers_exactly(
        client: httpx.AsyncClient) -> None:
    as_json = await client.post(SCEN, json=BODY)
    as_tensors = await client.post(SCEN, json=BODY, headers={"Accept": TENSORS})
    assert as_json.status_code == as_tensors.status_code == 200, as_tensors.text
    doc = decode(as_tensors)
    same(doc, as_json.json())
    grid = [(0.2 * (1 + a), 0.05 + b) for a in (-0.1, 0.0, 0.1) for b in (-0.01, 0.01)]
    for scenario, (sigma, r) in zip(doc["scenarios"], grid, strict=True):
        want = np.array([cf.black_scholes_greeks(s, k, t, sigma, r)["price"]
                         for s, k, t in BOOK])
        np.testing.assert_allclose(scenario["values"], want, rtol=1e-12, atol=0)
        assert scenario["values"].shape == (4,) and scenario["gamma_pnl"].shape == (4,)


async def test_other_accepts_get_json(client: httpx.AsyncClient) -> None:
    for accept in (None, "*/*", "application/json", "text/html", "application/octet-stream",
                   f"{TENSORS};q=0", f"{TENSORS}-not", f"{TENSORS};q=oops"):
        headers = {} if accept is None else {"Accept": accept}
        r = await client.post(SCEN, json=BODY, headers=headers)
        assert r.status_code == 200 and r.headers["content-type"] == "application/json", accept
        assert isinstance(r.json()["base"], list)
    r = await client.post(SCEN, json=BODY,
                          headers={"Accept": f"application/json;q=0.5, {TENSORS}"})
    assert r.headers["content-type"] == TENSORS


async def test_errors_stay_problem_json(client: httpx.AsyncClient) -> None:
    bad = {**BODY, "scenarios": {"shifts": {"vol": {"type": "absolute", "values": [0.1]}}}}
    r = await client.post(SCEN, json=bad, headers={"Accept": TENSORS})
    assert_problem(r, 422, "'vol'", "neither a parameter nor an input")
    r = await client.post("/v1/routines/nope/scenarios", json=BODY, headers={"Accept": TENSORS})
    assert_problem(r, 404, "nope")


@pytest.mark.parametrize("accept", [None, TENSORS])
async def test_totals_only_leaves_out_every_per_sample_array(
        client: httpx.AsyncClient, accept: str | None) -> None:
    headers = {} if accept is None else {"Accept": accept}
    full = (await client.post(SCEN, json=BODY)).json()
    r = await client.post(SCEN, json={**BODY, "totals_only": True}, headers=headers)
    assert r.status_code == 200, r.text
    doc = decode(r) if accept else r.json()
    assert not {"base", "derivatives", "second_derivatives"} & set(doc)
    assert doc["total_pnl"] == full["total_pnl"]
    for row, whole in zip(doc["scenarios"], full["scenarios"], strict=True):
        assert not set(PER_SAMPLE) & set(row)
        assert row == {k: v for k, v in whole.items() if k not in PER_SAMPLE}


async def test_the_answers_price_depends_on_its_form(make_client: ClientFactory) -> None:
    # 6 scenarios x 4 samples x 5 arrays: 2,880 bytes as JSON, 960 as tensors
    async with make_client(max_response_bytes=2000) as c:
        assert_problem(await c.post(SCEN, json=BODY), 422, "DYDC_MAX_RESPONSE_BYTES",
                       "totals_only: true", TENSORS)
        r = await c.post(SCEN, json=BODY, headers={"Accept": TENSORS})
        assert r.status_code == 200, r.text
        r = await c.post(SCEN, json={**BODY, "totals_only": True})
        assert r.status_code == 200, r.text
