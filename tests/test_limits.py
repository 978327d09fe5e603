"""``GET /v1/limits``: the service's own settings, as a client needs them to split batches."""

from __future__ import annotations

import re

import pytest

from tests.support import ClientFactory, assert_error, assert_problem, scrape, value

pytestmark = pytest.mark.anyio


async def test_limits_follow_the_settings(make_client: ClientFactory) -> None:
    async with make_client(max_samples=1234, max_body_bytes=99_999, max_batch_samples=64,
                           max_queue_samples=640, request_timeout_ms=1500,
                           reverse_loop_max_n=7, jacrev_max_n=11, max_job_cost=2.5,
                           strategies="forward,jacrev", max_response_bytes=77_777,
                           warmup=False) as client:
        response = await client.get("/v1/limits")
    assert response.status_code == 200
    assert response.json() == {
        "max_samples": 1234, "max_body_bytes": 99_999, "max_batch_samples": 64,
        "max_queue_samples": 640, "request_timeout_ms": 1500.0,
        "strategy_caps": {"reverse-loop": 7, "reverse-batched": 4096, "jacrev": 11},
        "max_job_cost_s": 2.5, "strategies": ["forward", "jacrev"],
        "max_response_bytes": 77_777, "json_number_bytes": 25,
    }


async def test_limits_documented(make_client: ClientFactory) -> None:
    async with make_client(warmup=False) as client:
        schema = (await client.get("/openapi.json")).json()
    documented = schema["paths"]["/v1/limits"]["get"]["responses"]["200"]
    assert documented["content"]["application/json"]["schema"]["$ref"].endswith("ServiceLimits")


# softmax: 3 outputs; wrt T and the 3 input features; order 2, cross: 10 pairs. An answer of
# 1 + 4 + 10 arrays of 3 numbers a sample: 45 numbers, 1125 bytes as JSON, 360 in FP64 binary.
SOFTMAX = {"params": {"T": 1.5}, "wrt": ["T", "z1", "z2", "z3"], "order": 2, "cross": True}


def _rows(n: int) -> list[list[float]]:
    return [[0.1 * i, 0.2, -0.3] for i in range(n)]


async def test_answers_over_the_limit_are_priced_and_refused(make_client: ClientFactory) -> None:
    async with make_client(max_response_bytes=1125 * 100, warmup=False) as client:
        before = value(scrape((await client.get("/metrics")).text), "dydc_rejections_total",
                       reason="response_bytes")
        ok = await client.post("/v1/routines/softmax/sensitivities",
                               json={"inputs": _rows(100), **SOFTMAX})
        assert ok.status_code == 200, ok.text
        assert len(ok.content) < 1125 * 100  # the price is an upper bound of the real size
        r = await client.post("/v1/routines/softmax/sensitivities",
                              json={"inputs": _rows(101), **SOFTMAX})
        assert_problem(r, 422, "about 113625 bytes", "101 samples x 1125 bytes",
                       "15 arrays of 3 outputs", "DYDC_MAX_RESPONSE_BYTES", "112500",
                       "cross: false", "binary tensors over v2", "at most 100 samples")
        assert r.json()["type"] == "urn:dydc:problem:response-too-large"
        # the same request in v2: 3 x 15 x 25 bytes as JSON tensors, 3 x 15 x 8 as binary
        tensor = {"name": "x", "datatype": "FP64", "shape": [101, 3],
                  "data": [v for row in _rows(101) for v in row]}
        parameters = {"T": 1.5, "wrt": "T,z1,z2,z3", "order": 2, "cross": True}
        v2 = await client.post("/v2/models/softmax/infer",
                               json={"inputs": [tensor], "parameters": parameters})
        assert_error(v2, 400, "DYDC_MAX_RESPONSE_BYTES", "as JSON tensors")
        binary = await client.post("/v2/models/softmax/infer", json={
            "inputs": [tensor], "parameters": {**parameters, "binary_data_output": True}})
        assert binary.status_code == 200, binary.text
        after = value(scrape((await client.get("/metrics")).text), "dydc_rejections_total",
                      reason="response_bytes")
        assert after == before + 2


async def test_the_longest_json_numbers_stay_under_the_limit(make_client: ClientFactory) -> None:
    """orjson writes a float64 in at most 24 characters, and a comma: a batch of the size the
    refusal suggests, of such numbers, gets an answer whose arrays fit the limit (priced at
    24 bytes a number, it came back 4% over); only the fixed fields come on top."""
    longest = -1.2345678901234567e-100  # 24 characters as JSON
    limit = 100_000
    async with make_client(max_response_bytes=limit, warmup=False) as client:
        body = {"params": {"C": 1.0}, "wrt": ["C"]}
        r = await client.post("/v1/routines/linear/sensitivities",
                              json={"inputs": [longest] * 3000, **body})
        assert_problem(r, 422, "DYDC_MAX_RESPONSE_BYTES")
        at_most = int(re.search(r"batches of at most (\d+) samples", r.json()["detail"])[1])
        ok = await client.post("/v1/routines/linear/sensitivities",
                               json={"inputs": [longest] * at_most, **body})
        assert ok.status_code == 200, ok.text
        one = await client.post("/v1/routines/linear/sensitivities",
                                json={"inputs": [longest], **body})
    # the answer but its two arrays of one number; the count and the timings may take a few
    # characters more in the large one
    fixed = len(one.content) - 2 * 24
    assert len(ok.content) - fixed <= limit + 16, (at_most, len(ok.content), fixed)
