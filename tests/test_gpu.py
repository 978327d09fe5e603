"""The CUDA path: every routine on the GPU agrees with the CPU. Skipped without CUDA."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.support import ClientFactory, scrape, value

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


async def test_compiled_forward_on_cuda_matches_cpu(make_client: ClientFactory,
                                                    client: httpx.AsyncClient,
                                                    tmp_path: Path) -> None:
    """Compiled forward mode on CUDA (an AOTInductor package with Triton kernels) for a
    launch over DYDC_COMPILE_MIN_SAMPLES in several calls, against the CPU's eager forward
    mode: the first request is answered eagerly while the graph is built, a later one
    compiled."""
    import anyio

    rows = [[80.0 + i % 41, 100.0, 0.25 + (i % 7) / 4] for i in range(300)]
    body = {"inputs": rows, "params": {"sigma": 0.3, "r": 0.02}}
    path = "/v1/routines/black_scholes_call/sensitivities?strategy=forward"
    name = "dydc_compiled_graphs_total"
    answers = []
    async with make_client(device="cuda", compile_min_samples=128, compile_chunk=128,
                           compile_cache_dir=tmp_path / "cache") as gpu:
        before = scrape((await gpu.get("/metrics")).text)
        answers.append((await gpu.post(path, json=body)).json())  # eager, and a build asked
        with anyio.fail_after(600):
            while value(scrape((await gpu.get("/metrics")).text), name,
                        routine="black_scholes_call") == value(before, name,
                                                               routine="black_scholes_call"):
                await anyio.sleep(0.5)
        answers.append((await gpu.post(path, json=body)).json())  # compiled
        refused = value(scrape((await gpu.get("/metrics")).text),
                        "dydc_compile_refusals_total", reason="recheck")
    assert refused == value(before, "dydc_compile_refusals_total", reason="recheck")
    on_cpu = (await client.post(path, json=body)).json()
    for on_gpu in answers:
        assert on_gpu["values"] == pytest.approx(on_cpu["values"], rel=1e-12, abs=1e-12)
        for p in ("sigma", "r"):
            assert on_gpu["derivatives"][p] == pytest.approx(on_cpu["derivatives"][p],
                                                             rel=1e-10, abs=1e-10)
