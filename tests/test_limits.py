"""``GET /v1/limits``: the service's own settings, as a client needs them to split batches."""

from __future__ import annotations

import pytest

from tests.conftest import ClientFactory

pytestmark = pytest.mark.anyio


async def test_limits_follow_the_settings(make_client: ClientFactory) -> None:
    async with make_client(max_samples=1234, max_body_bytes=99_999, max_batch_samples=64,
                           max_queue_samples=640, request_timeout_ms=1500,
                           reverse_loop_max_n=7, jacrev_max_n=11, max_job_cost=2.5,
                           strategies="forward,jacrev", warmup=False) as client:
        response = await client.get("/v1/limits")
    assert response.status_code == 200
    assert response.json() == {
        "max_samples": 1234, "max_body_bytes": 99_999, "max_batch_samples": 64,
        "max_queue_samples": 640, "request_timeout_ms": 1500.0,
        "strategy_caps": {"reverse-loop": 7, "reverse-batched": 4096, "jacrev": 11},
        "max_job_cost_s": 2.5, "strategies": ["forward", "jacrev"],
    }


async def test_limits_documented(make_client: ClientFactory) -> None:
    async with make_client(warmup=False) as client:
        schema = (await client.get("/openapi.json")).json()
    documented = schema["paths"]["/v1/limits"]["get"]["responses"]["200"]
    assert documented["content"]["application/json"]["schema"]["$ref"].endswith("ServiceLimits")
