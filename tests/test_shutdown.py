"""A real uvicorn process under load receives SIGTERM: every accepted request is answered."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server() -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    env = {**os.environ, "DYDC_DEVICE": "cpu", "DYDC_HOST": "127.0.0.1", "DYDC_PORT": str(port),
           "DYDC_GRACE_PERIOD_S": "20", "DYDC_LOG_LEVEL": "warning"}
    proc = subprocess.Popen([sys.executable, "-m", "app"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            time.sleep(0.1)
        else:
            pytest.fail("server did not become ready")
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


async def test_sigterm_drains_accepted_requests(
        server: tuple[subprocess.Popen[bytes], str]) -> None:
    proc, url = server
    t = [0.05 * i for i in range(200)]

    async def one(client: httpx.AsyncClient, i: int) -> httpx.Response:
        r = 0.1 + 0.01 * i
        return await client.post(
            url + "/v1/routines/logistic_rk4/sensitivities",
            json={"inputs": [[10.0, ti] for ti in t], "params": {"r": r, "K": 100.0}})

    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        tasks = [asyncio.ensure_future(one(client, i)) for i in range(48)]
        await asyncio.sleep(0.5)  # all sent and queued behind each other on the worker
        proc.send_signal(signal.SIGTERM)
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
    assert proc.wait(30) in (0, -signal.SIGTERM)
    with pytest.raises(httpx.TransportError):
        httpx.get(url + "/healthz", timeout=1)
