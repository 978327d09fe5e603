"""What the client's tests (tests/test_client*.py) share: live services, real uvicorn
processes on 127.0.0.1, one with the default limits and one with limits set low so that the
client must split batches (session-scoped fixtures, registered in conftest.py, started only
when a test asks); and Black-Scholes in closed form."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from tests.support import free_port, server_process

__all__ = ["SMALL_LIMITS", "black_scholes", "dydc_url", "options", "small_dydc_url"]

# Chunks must stay under 100 samples and 16 KiB of body: about 600 numbers of JSON.
SMALL_LIMITS = {"DYDC_MAX_SAMPLES": "100", "DYDC_MAX_BODY_BYTES": "16384",
                "DYDC_MAX_BATCH_SAMPLES": "64", "DYDC_REVERSE_LOOP_MAX_N": "30"}


def _serve(settings: dict[str, str]) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "DYDC_DEVICE": "cpu", "DYDC_LOG_LEVEL": "warning",
           "DYDC_WARMUP": "false", "DYDC_TORCH_THREADS": "1", **settings}
    argv = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "warning", "--no-access-log"]
    with server_process(argv, env, port) as server:
        yield server.url


@pytest.fixture(scope="session")
def dydc_url() -> Iterator[str]:
    """``http://127.0.0.1:<port>`` of a service with the default limits."""
    yield from _serve({})


@pytest.fixture(scope="session")
def small_dydc_url() -> Iterator[str]:
    """A service with :data:`SMALL_LIMITS`."""
    yield from _serve(SMALL_LIMITS)


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
