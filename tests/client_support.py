"""What the client's tests (tests/test_client*.py) share: live services, real uvicorn
processes on 127.0.0.1, one with the default limits and one with limits set low so that the
client must split batches (session-scoped fixtures, registered in conftest.py, started only
when a test asks); and Black-Scholes in closed form."""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn

from app.config import Settings
from app.main import create_app
from tests.support import free_port, server_process

__all__ = ["SMALL_LIMITS", "black_scholes", "dydc_url", "options", "small_dydc_url"]

# Chunks must stay under 100 samples and 16 KiB of body: about 600 numbers of JSON.
SMALL_LIMITS = {"DYDC_MAX_SAMPLES": "100", "DYDC_MAX_BODY_BYTES": "16384",
                "DYDC_MAX_BATCH_SAMPLES": "64", "DYDC_REVERSE_LOOP_MAX_N": "30"}


def _serve(argv: list[str], port: int, settings: dict[str, str]) -> Iterator[str]:
    env = {**os.environ, "DYDC_DEVICE": "cpu", "DYDC_LOG_LEVEL": "warning",
           "DYDC_WARMUP": "false", "DYDC_TORCH_THREADS": "1", **settings}
    with server_process(argv, env, port) as server:
        yield server.url


@pytest.fixture(scope="session")
def dydc_url() -> Iterator[str]:
    """``http://127.0.0.1:<port>`` of a service with the default limits, started by the
    client's own ``dydc serve`` (so that every test using it also tests that command)."""
    port = free_port()
    dydc_script = Path(sys.executable).with_name("dydc")
    yield from _serve([str(dydc_script), "serve", "--host", "127.0.0.1", "--port", str(port)],
                      port, {})


@pytest.fixture(scope="session")
def small_dydc_url() -> Iterator[str]:
    """A service with :data:`SMALL_LIMITS`: uvicorn on a thread of this process, which has
    torch imported already (a second process took 28 s to start on the loaded 2-core
    machine)."""
    settings = Settings(device="cpu", warmup=False, torch_threads=1,
                        **{k.removeprefix("DYDC_").lower(): int(v)
                           for k, v in SMALL_LIMITS.items()})
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False, ws="none",
                                           http="h11", lifespan="on"))
    thread = threading.Thread(target=server.run, name="small-dydc", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not (server.started and httpx.get(f"{url}/readyz").status_code == 200):
            assert thread.is_alive() and time.monotonic() < deadline, "not ready within 60 s"
            time.sleep(0.05)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=60)


_erf = np.vectorize(math.erf)


def _cdf(x: np.ndarray) -> np.ndarray:
    return np.asarray(0.5 * (1 + _erf(x / math.sqrt(2))))


def black_scholes(S: np.ndarray, K: np.ndarray, T: np.ndarray, sigma: Any,
                  r: float) -> dict[str, np.ndarray]:
    """Price, vega and rho in closed form (Hull)."""
    d1 = (np.log(S / K) + (r + sigma**2 / 2) * T) / (sigma * np.sqrt(T))
    d2 = d1 - sigma * np.sqrt(T)
    pdf = np.exp(-d1**2 / 2) / math.sqrt(2 * math.pi)
    return {"price": S * _cdf(d1) - K * np.exp(-r * T) * _cdf(d2),
            "sigma": S * pdf * np.sqrt(T),
            "r": K * T * np.exp(-r * T) * _cdf(d2)}


def options(n: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.uniform(40, 60, n), rng.uniform(40, 60, n),
                            rng.uniform(0.1, 2.0, n)])
