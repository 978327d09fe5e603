"""Shared fixtures: an app with its lifespan running, reached through httpx."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from asgi_lifespan import LifespanManager

from app.config import Settings
from app.engine import load_torch_extensions
from app.main import create_app
from tests.support import SMALL_LIMITS, ClientFactory, free_port, server_process, server_thread


def _inductor_cache() -> str:
    """One Inductor cache for the run's builds, shared by its xdist workers (each test's
    DYDC_COMPILE_CACHE_DIR is its own): the build process keeps an operator's
    TORCHINDUCTOR_CACHE_DIR, so that the headers AOTInductor precompiles are compiled once,
    not once per test, and a graph that two test files build is compiled by g++ once (Inductor
    locks its cache for concurrent processes)."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if run is None or not run.isalnum():
        return tempfile.mkdtemp(prefix="dydc-tests-inductor-")
    path = Path(tempfile.gettempdir()) / f"dydc-tests-inductor-{run}"
    path.mkdir(mode=0o700, exist_ok=True)
    return str(path)


os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", _inductor_cache())
# apps started by tests keep their compiled graphs out of the user's own cache directory
os.environ.setdefault("DYDC_COMPILE_CACHE_DIR", tempfile.mkdtemp(prefix="dydc-tests-compiled-"))
# the suite keeps both cores busy: builds that waited for idle CPU would wait for its end
os.environ.setdefault("DYDC_COMPILE_BUILD_IDLE", "false")
# small launches stay eager in the suite unless a test asks (tests/test_compiled_hot.py): a
# test that sends a thousand small requests would start builds beside the rest of the suite
os.environ.setdefault("DYDC_COMPILE_HOT_LAUNCHES", "0")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA: torch.cuda.is_available() is false")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session", autouse=True)
def _torch_extensions() -> None:
    """What the app's lifespan loads first (its import warns), for tests that compute
    without an app."""
    load_torch_extensions()


@asynccontextmanager
async def _serve(**settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Settings(**{"device": "cpu", **settings}))
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://dydc.test",
                                     timeout=60) as client:
            await _until_ready(client)
            yield client


async def _until_ready(client: httpx.AsyncClient) -> None:
    import anyio

    with anyio.fail_after(60):
        while (await client.get("/readyz")).status_code != 200:
            await anyio.sleep(0.02)


@pytest.fixture(scope="session")
def make_client() -> ClientFactory:
    """``async with make_client(max_samples=10) as client:`` an app with its own settings."""
    return _serve


@pytest.fixture(scope="module")
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """One app per test module with default settings on the CPU, warm and ready."""
    async with _serve() as c:
        yield c



# -- live services on 127.0.0.1 for the client's tests (tests/test_client*.py), started only
# when a test asks, one per session


@pytest.fixture(scope="session")
def dydc_url() -> Iterator[str]:
    """``http://127.0.0.1:<port>`` of a service with the default limits, started by the
    client's own ``dydc serve`` (so that every test using it also tests that command)."""
    port = free_port()
    dydc_script = Path(sys.executable).with_name("dydc")
    argv = [str(dydc_script), "serve", "--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, "DYDC_DEVICE": "cpu", "DYDC_LOG_LEVEL": "warning",
           "DYDC_WARMUP": "false", "DYDC_TORCH_THREADS": "1"}
    with server_process(argv, env, port) as server:
        yield server.url


@pytest.fixture(scope="session")
def small_dydc_url() -> Iterator[str]:
    """A service with :data:`tests.support.SMALL_LIMITS`, so that the client must split
    batches: uvicorn on a thread of this process."""
    limits: dict[str, Any] = {k.removeprefix("DYDC_").lower(): int(v)
                              for k, v in SMALL_LIMITS.items()}
    settings = Settings(device="cpu", warmup=False, torch_threads=1, **limits)
    with server_thread(settings) as url:
        yield url
