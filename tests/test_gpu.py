"""The CUDA path: every routine on the GPU agrees with the CPU. Skipped without CUDA."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import ClientFactory

pytestmark = [pytest.mark.anyio, pytest.mark.gpu]

INPUTS = {
    "linear": [0.0, 1.0, 2.0, 3.0],
    "exponential_decay": [[2.0, 0.5], [1.0, 3.0]],
    "logistic_growth": [[10.0, 1.0], [50.0, 4.0]],
    "logistic_rk4": [[10.0, 1.0], [50.0, 4.0]],
    "damped_oscillator": [0.0, 0.5, 2.0],
    "black_scholes_call": [[100.0, 95.0, 0.5], [100.0, 105.0, 1.0]],
    "softmax": [[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]],
    "gamma_survival": [[2.0, 1.5], [0.5, 0.2]],
}


async def answer(client: httpx.AsyncClient, routine: str, strategy: str) -> dict[str, object]:
    r = await client.post(f"/v1/routines/{routine}/sensitivities?strategy={strategy}",
                          json={"inputs": INPUTS[routine]})
    assert r.status_code == 200, r.text
    body: dict[str, object] = r.json()
    return body


@pytest.mark.parametrize("strategy", ["auto", "forward-dual", "vmap-grad", "jacrev"])
async def test_cuda_matches_cpu(make_client: ClientFactory, client: httpx.AsyncClient,
                                strategy: str) -> None:
    async with make_client(device="cuda") as gpu:
        assert (await gpu.get("/readyz")).json()["device"].startswith("cuda")
        for routine in INPUTS:
            on_gpu, on_cpu = await answer(gpu, routine, strategy), await answer(client, routine,
                                                                                strategy)
            assert str(on_gpu["device"]).startswith("cuda")
            assert on_gpu["values"] == pytest.approx(on_cpu["values"], rel=1e-12, abs=1e-14)
            derivs_gpu, derivs_cpu = on_gpu["derivatives"], on_cpu["derivatives"]
            assert isinstance(derivs_gpu, dict) and isinstance(derivs_cpu, dict)
            for name, d in derivs_cpu.items():
                assert derivs_gpu[name] == pytest.approx(d, rel=1e-10, abs=1e-12)
