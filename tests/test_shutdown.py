"""A real uvicorn process under load receives SIGTERM: every accepted request is answered."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import sys
from collections.abc import Iterator

import httpx
import pytest

from tests.support import ServerProcess, free_port, scrape, server_process, value

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture
def server() -> Iterator[ServerProcess]:
    port = free_port()
    env = {**os.environ, "DYDC_DEVICE": "cpu", "DYDC_HOST": "127.0.0.1", "DYDC_PORT": str(port),
           "DYDC_GRACE_PERIOD_S": "20", "DYDC_LOG_LEVEL": "warning"}
    with server_process([sys.executable, "-m", "app"], env, port) as running:
        yield running


async def test_sigterm_drains_accepted_requests(server: ServerProcess) -> None:
    t = [0.05 * i for i in range(200)]

    async def one(client: httpx.AsyncClient, i: int) -> httpx.Response:
        r = 0.1 + 0.01 * i
        return await client.post(
            server.url + "/v1/routines/logistic_rk4/sensitivities",
            json={"inputs": [[10.0, ti] for ti in t], "params": {"r": r, "K": 100.0}})

    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        tasks = [asyncio.ensure_future(one(client, i)) for i in range(48)]
        # all accepted (queued behind each other on the worker) before the signal: a fixed
        # sleep was too short when the test process itself ran slowly
        async with httpx.AsyncClient(timeout=10) as probe:
            for _ in range(300):
                scraped = scrape((await probe.get(server.url + "/metrics")).text)
                if value(scraped, "dydc_requests_in_flight") >= 48:
                    break
                await asyncio.sleep(0.05)
        assert not any(task.done() for task in tasks)
        server.proc.send_signal(signal.SIGTERM)
        responses = await asyncio.gather(*tasks)
    for i, resp in enumerate(responses):
        assert resp.status_code == 200, resp.text
        r, K, n0 = 0.1 + 0.01 * i, 100.0, 10.0
        body = resp.json()
        for ti, y, dr in zip(t, body["values"], body["derivatives"]["r"], strict=True):
            e = math.exp(-r * ti)
            a = (K - n0) / n0
            assert y == pytest.approx(K / (1 + a * e), rel=1e-7)
            assert dr == pytest.approx(K * a * ti * e / (1 + a * e) ** 2, rel=1e-6, abs=1e-9)
    # uvicorn re-raises the SIGTERM it captured once the graceful shutdown is over
    assert server.proc.wait(30) in (0, -signal.SIGTERM), server.output()
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url + "/healthz", timeout=1)


async def test_what_is_left_at_the_end_of_the_grace_period_gets_503() -> None:
    """A heavy job still running, and requests queued behind it, when DYDC_GRACE_PERIOD_S
    ends after SIGTERM: each gets 503 problem+json with Retry-After (v1) or the protocol's
    error (v2), never uvicorn's text/plain 500, and the server exits."""
    port = free_port()
    env = {**os.environ, "DYDC_DEVICE": "cpu", "DYDC_HOST": "127.0.0.1", "DYDC_PORT": str(port),
           "DYDC_GRACE_PERIOD_S": "1", "DYDC_LOG_LEVEL": "warning", "DYDC_WARMUP": "false",
           "DYDC_MAX_JOB_COST": "10000"}
    heavy_body = {"inputs": [[10.0, 0.01 * i] for i in range(1000)], "params": {"r": 0.3}}
    with server_process([sys.executable, "-m", "app"], env, port) as server:
        async with httpx.AsyncClient(timeout=60) as client:
            heavy = asyncio.ensure_future(client.post(
                server.url + "/v1/routines/logistic_rk4/sensitivities?strategy=reverse-loop",
                json=heavy_body))
            queued = asyncio.ensure_future(client.post(
                server.url + "/v2/models/logistic_rk4/infer",
                json={"inputs": [{"name": "x", "datatype": "FP64", "shape": [1000, 2],
                                  "data": heavy_body["inputs"]}],
                      "parameters": {"strategy": "reverse-loop", "r": 0.2}}))
            for _ in range(300):
                scraped = scrape((await client.get(server.url + "/metrics")).text)
                if value(scraped, "dydc_requests_in_flight") >= 2:
                    break
                await asyncio.sleep(0.05)
            server.proc.send_signal(signal.SIGTERM)
            first, second = await asyncio.gather(heavy, queued)
        assert first.status_code == 503, first.text
        assert first.headers["content-type"] == "application/problem+json"
        assert first.headers["retry-after"] == "1"
        assert "shut down before this request finished" in first.json()["detail"]
        assert second.status_code == 503, second.text
        assert second.headers["content-type"] == "application/json"
        assert "shut down" in second.json()["error"]
        assert server.proc.wait(30) in (0, -signal.SIGTERM), server.output()
