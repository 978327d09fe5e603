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
from starlette.datastructures import Headers

from app.api.tensor_answer import wants_tensors
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
        assert "Accept" in r.headers.get_list("vary"), r.headers  # (a cache keys on it)
    r = await client.post(SCEN, json=BODY,
                          headers={"Accept": f"application/json;q=0.5, {TENSORS}"})
    assert r.headers["content-type"] == TENSORS
    assert "Accept" in r.headers.get_list("vary"), r.headers


@pytest.mark.parametrize(("accept", "tensors"), [
    (TENSORS, True),
    (TENSORS.upper(), True),  # media types compare without case
    (f" {TENSORS} ; Q=0.8 ", True),
    (f"application/json;q=0.5, {TENSORS}", True),  # the client's own Accept
    (f"{TENSORS}, application/json", True),  # equal weights: the one the caller named
    (f"application/json;q=1, {TENSORS};q=0.1", False),  # JSON preferred
    (f"{TENSORS};q=0.5, */*", False),  # anything at 1, this form at 0.5: JSON
    (f"{TENSORS};q=0.5, */*;q=0.2", True),
    (f"{TENSORS};q=0.5, application/*;q=0.9, */*;q=0.1", False),  # the more specific range
    (f"{TENSORS};q=0.5, application/json;q=0.2, application/*;q=0.9", True),
    (f"{TENSORS};q=0", False),
    (f"{TENSORS};q=1.5", False),  # out of range: not acceptable
    (f"{TENSORS};q=oops", False),
    (f"{TENSORS}-not", False),
    ("*/*", False),
    ("application/json", False),
])
def test_the_tensor_form_is_negotiated(accept: str, tensors: bool) -> None:
    assert wants_tensors(Headers({"accept": accept})) is tensors


async def test_a_preference_for_json_is_kept(client: httpx.AsyncClient) -> None:
    r = await client.post(SCEN, json=BODY,
                          headers={"Accept": f"application/json, {TENSORS};q=0.1"})
    assert r.headers["content-type"] == "application/json"
    r = await client.post(SCEN, json=BODY, headers={"Accept": TENSORS.upper()})
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


async def test_the_price_counts_per_sample_shifts(make_client: ClientFactory) -> None:
    """A shifted input feature puts one absolute shift per sample in every scenario's
    ``shifts``, totals only or not: 10 scenarios x 50 samples = 500 numbers, about 12,000
    bytes as JSON, over a limit of 10,000 (which a parameter's shifts stay under)."""
    x = [float(i) for i in range(1, 51)]
    values = [0.01 * i for i in range(1, 11)]
    async with make_client(max_response_bytes=10_000) as c:
        by_x = {"inputs": x, "totals_only": True,
                "scenarios": {"shifts": {"x": {"type": "relative", "values": values}}}}
        assert_problem(await c.post("/v1/routines/linear/scenarios", json=by_x), 422,
                       "500 per-sample shifts", "DYDC_MAX_RESPONSE_BYTES",
                       "shifts of parameters shared by every sample")
        by_c = {**by_x, "scenarios": {"shifts": {"C": {"type": "relative", "values": values}}}}
        r = await c.post("/v1/routines/linear/scenarios", json=by_c)
        assert r.status_code == 200, r.text
    async with make_client(max_response_bytes=14_000) as c:
        r = await c.post("/v1/routines/linear/scenarios", json=by_x)
        assert r.status_code == 200, r.text
        assert len(r.content) <= 14_000  # the estimate bounds what is sent


async def test_the_answers_price_depends_on_its_form(make_client: ClientFactory) -> None:
    # 6 scenarios x 4 samples x 5 arrays: 2,880 bytes as JSON, 960 as tensors
    async with make_client(max_response_bytes=2000) as c:
        assert_problem(await c.post(SCEN, json=BODY), 422, "DYDC_MAX_RESPONSE_BYTES",
                       "totals_only: true", TENSORS)
        r = await c.post(SCEN, json=BODY, headers={"Accept": TENSORS})
        assert r.status_code == 200, r.text
        r = await c.post(SCEN, json={**BODY, "totals_only": True})
        assert r.status_code == 200, r.text
