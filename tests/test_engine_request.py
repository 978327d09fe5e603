"""The engine's one request object, without HTTP: ``Engine.run`` takes a ``Request`` (it
prepares it) or a prepared job, and the classic example gives dy/dC = x exactly."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
import pytest
from asgi_lifespan import LifespanManager

from app.config import Settings
from app.engine import Engine, JobKind, Request
from app.engine.errors import InvalidRequest
from app.main import create_app

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
async def engine() -> AsyncIterator[Engine]:
    app = create_app(Settings(device="cpu", warmup=False, torch_threads=1))
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60):
        yield app.state.engine


def _classic(**fields: object) -> Request:
    return Request(JobKind.SENSITIVITIES, "linear", np.arange(10.0), {"C": -5.0},
                   wrt=["C"], **fields)  # type: ignore[arg-type]


async def test_a_request_runs_as_given(engine: Engine) -> None:
    result = await engine.run(_classic())
    assert result.strategy == "forward"
    assert result.values[:, 0].tolist() == [-5.0 * i for i in range(10)]
    assert result.derivatives["C"][:, 0].tolist() == [float(i) for i in range(10)]


async def test_a_prepared_job_runs_the_same_and_gets_its_future_when_queued(
        engine: Engine) -> None:
    job = engine.prepare(_classic(strategy="jacrev"))
    assert not hasattr(job, "future")  # made on the event loop that awaits it
    result = await engine.run(job)
    assert job.future.done() and result.strategy == "jacrev"
    assert result.derivatives["C"][:, 0].tolist() == [float(i) for i in range(10)]


async def test_order_two_and_cross_travel_in_the_request(engine: Engine) -> None:
    """black_scholes_call's d2C/dsigma dr against finite differences of its vega."""
    x = np.array([[100.0, 100.0, 1.0], [90.0, 100.0, 0.5]])
    result = await engine.run(Request(JobKind.SENSITIVITIES, "black_scholes_call", x,
                                      {"sigma": 0.2, "r": 0.05}, order=2, cross=True))
    assert set(result.second_derivatives) == {"sigma,sigma", "r,r", "sigma,r"}
    h = 1e-5
    up, down = [await engine.run(Request(JobKind.SENSITIVITIES, "black_scholes_call", x,
                                         {"sigma": 0.2, "r": 0.05 + s}, wrt=["sigma"]))
                for s in (h, -h)]
    vanna = (up.derivatives["sigma"] - down.derivatives["sigma"]) / (2 * h)
    assert np.allclose(result.second_derivatives["sigma,r"].numpy(), vanna.numpy(),
                       rtol=1e-6)


async def test_a_bad_request_is_refused_before_it_is_queued(engine: Engine) -> None:
    with pytest.raises(InvalidRequest, match=r"timeout_ms = 0\.5"):
        await engine.run(_classic(timeout_ms=0.5))
