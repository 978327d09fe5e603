"""Second derivatives that forward mode knows to be zero (d2y/dC2 of y = C x) come back as
PyTorch's symbolic zero, a tensor without a buffer: every answer holds real zeros instead, on
every endpoint and codec (schemathesis found a one-sample compare that answered 500)."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from app.engine.runtime.executor import _to_host

pytestmark = pytest.mark.anyio


def test_a_symbolic_zero_leaves_the_engine_as_zeros() -> None:
    import torch

    zero = torch._efficientzerotensor(3, 1, dtype=torch.float64)
    assert zero._is_zerotensor()
    host = _to_host(zero, torch.float64)
    assert not host._is_zerotensor()
    assert host.numpy().tolist() == [[0.0], [0.0], [0.0]]


@pytest.mark.parametrize("inputs", [[3.0], [1.0, 2.0]])
async def test_order_2_of_a_linear_routine_on_every_endpoint(client: httpx.AsyncClient,
                                                            inputs: list[float]) -> None:
    body = {"inputs": inputs, "params": {"C": 2.0}, "order": 2}
    for path in ("sensitivities", "compare"):
        r = await client.post(f"/v1/routines/linear/{path}", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["second_derivatives"] == {"C,C": [0.0] * len(inputs)}
    v2 = await client.post("/v2/models/linear/infer", json={
        "inputs": [{"name": "x", "datatype": "FP64", "shape": [len(inputs)], "data": inputs}],
        "parameters": {"C": 2.0, "order": 2, "binary_data_output": True}})
    assert v2.status_code == 200, v2.text
    length = int(v2.headers["inference-header-content-length"])
    tail = np.frombuffer(v2.content[length:], "<f8")
    assert tail.size == 3 * len(inputs)  # y, dy_dC, d2y_dC_dC
    assert tail[-len(inputs):].tolist() == [0.0] * len(inputs)
