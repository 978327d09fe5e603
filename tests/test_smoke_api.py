from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.anyio


async def test_forum_example(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/routines/linear/sensitivities",
                          json={"inputs": list(range(10)), "params": {"C": -5.0}, "wrt": ["C"]})
    assert r.status_code == 200, r.text
    assert r.json()["derivatives"]["C"] == [float(i) for i in range(10)]
