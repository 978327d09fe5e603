"""The client splits a batch whose answer the service would refuse as too large
(DYDC_MAX_RESPONSE_BYTES, priced as the service prices it from ``GET /v1/limits``), on both
wires, and the merged answer is the one a single request would get."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import dydc
import httpx
import numpy as np
import pytest
from asgi_lifespan import LifespanManager

from app.config import Settings
from app.main import create_app

pytestmark = pytest.mark.anyio

# softmax (3 outputs), wrt T and its 3 features at order 2 with cross terms: 1 + 4 + 10 arrays,
# 45 numbers a sample: 1125 bytes as JSON, 360 as FP64 binary tensors
PER_SAMPLE_JSON = 45 * 25
LIMIT = PER_SAMPLE_JSON * 1000


@pytest.fixture(scope="module")
async def service() -> AsyncIterator[dydc.AsyncClient]:
    app = create_app(Settings(device="cpu", warmup=False, max_response_bytes=LIMIT))
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        yield transport  # type: ignore[misc]


@pytest.mark.parametrize(("protocol", "chunks"), [("json", 3), ("binary", 1)])
async def test_a_batch_is_split_under_the_answer_limit(service: httpx.ASGITransport,
                                                       protocol: str, chunks: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 3))
    async with dydc.AsyncClient("http://dydc.test", protocol=protocol,
                                transport=service) as client:
        limits = await client.limits()
        assert limits.max_response_bytes == LIMIT and limits.json_number_bytes == 25
        result = await client.sensitivities("softmax", x, {"T": 1.5},
                                            wrt=["T", "z1", "z2", "z3"], order=2, cross=True)
    assert result.chunks == chunks and result.n == 3000
    assert result.values.shape == (3000, 3)
    assert len(result.second_derivatives) == 10
    # softmax sums to 1 whatever T and z: its derivatives sum to 0 over the outputs
    assert np.allclose(result.values.sum(axis=1), 1.0)
    assert np.allclose(result.derivatives["T"].sum(axis=1), 0.0, atol=1e-12)
    assert math.isfinite(float(result.second_derivatives["T,T"].sum()))


def test_merged_checks_keep_a_relative_difference_over_a_null() -> None:
    """A chunk whose reference is 0 everywhere has no relative difference (NaN, the service's
    null): it gives way to another chunk's number, and stays NaN only where every one is."""
    from dydc.chunking import _merge_check
    from dydc.results import Check

    nan, fd = math.nan, "finite-difference"
    merged = _merge_check([Check(fd, {"C": 1e-9, "C,C": 0.0}, {"C": nan, "C,C": nan}),
                           Check(fd, {"C": 2e-9, "C,C": 0.0}, {"C": 0.5, "C,C": nan}), None])
    assert merged is not None
    assert merged.max_abs_diff == {"C": 2e-9, "C,C": 0.0}
    assert merged.max_rel_diff["C"] == 0.5 and math.isnan(merged.max_rel_diff["C,C"])
