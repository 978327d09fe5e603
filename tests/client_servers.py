"""Live services for the client's tests (tests/test_client*.py): real uvicorn processes on
127.0.0.1, one with the default limits and one with limits set low so that the client must
split batches. Session-scoped, registered in conftest.py, started only when a test asks."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

from tests.support import free_port, server_process

__all__ = ["SMALL_LIMITS", "dydc_url", "small_dydc_url"]

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
