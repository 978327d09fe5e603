"""An unmodified Open Inference Protocol client (tritonclient's HTTP client) against a real
uvicorn server: the forum example's dy/dC, binary and JSON, and errors as its exceptions."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import numpy as np
import pytest

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

from tests.support import free_port, server_process  # noqa: E402

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """``host:port`` of ``python -m uvicorn app.main:app`` on a free port, ready."""
    port = free_port()
    env = {**os.environ, "DYDC_DEVICE": "cpu", "DYDC_LOG_LEVEL": "warning"}
    argv = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "warning"]
    with server_process(argv, env, port):
        yield f"127.0.0.1:{port}"


@pytest.fixture
def client(server: str) -> Iterator[httpclient.InferenceServerClient]:
    c = httpclient.InferenceServerClient(url=server)
    try:
        yield c
    finally:
        c.close()


def test_health_and_metadata(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("linear") and client.is_model_ready("linear", "1")
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    meta = client.get_model_metadata("linear")
    assert [i["name"] for i in meta["inputs"]] == ["x"]
    assert [o["name"] for o in meta["outputs"]] == ["y", "dy_dC"]


@pytest.mark.parametrize("binary", [True, False])
def test_forum_example(client: httpclient.InferenceServerClient, binary: bool) -> None:
    x = httpclient.InferInput("x", [10], "FP64")
    x.set_data_from_numpy(np.arange(10, dtype=np.float64), binary_data=binary)
    result = client.infer(
        "linear", [x], request_id="forum",
        outputs=[httpclient.InferRequestedOutput("dy_dC", binary_data=binary),
                 httpclient.InferRequestedOutput("y", binary_data=binary)],
        parameters={"C": -5.0, "strategy": "forward"},
    )
    assert result.get_response()["id"] == "forum"
    dy = result.as_numpy("dy_dC")
    assert dy.dtype == np.float64 and dy.tolist() == [float(i) for i in range(10)]
    assert result.as_numpy("y").tolist() == [-5.0 * i for i in range(10)]


@pytest.mark.parametrize("compression", ["gzip", "deflate"])
def test_the_clients_request_compression(client: httpclient.InferenceServerClient,
                                         compression: str) -> None:
    """Both of tritonclient's request_compression_algorithm values (deflate was a 415)."""
    x = httpclient.InferInput("x", [10], "FP64")
    x.set_data_from_numpy(np.arange(10, dtype=np.float64), binary_data=True)
    result = client.infer("linear", [x], parameters={"C": -5.0},
                          request_compression_algorithm=compression,
                          response_compression_algorithm=compression)
    assert result.as_numpy("dy_dC").tolist() == [float(i) for i in range(10)]


def test_fp32_and_all_outputs_binary(client: httpclient.InferenceServerClient) -> None:
    t = np.linspace(0, 3, 7, dtype=np.float32)
    inp = httpclient.InferInput("t", [7, 1], "FP32")
    inp.set_data_from_numpy(t.reshape(7, 1))
    result = client.infer("damped_oscillator", [inp], parameters={"gamma": 0.2, "omega": 1.0})
    t64 = t.astype(np.float64)
    y = np.exp(-0.2 * t64) * np.cos(t64)
    assert result.as_numpy("y").dtype == np.float32
    np.testing.assert_allclose(result.as_numpy("y"), y, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(result.as_numpy("dy_dgamma"), -t64 * y, rtol=1e-5, atol=1e-6)


def test_errors_are_exceptions_with_status(client: httpclient.InferenceServerClient) -> None:
    x = httpclient.InferInput("x", [2], "FP64")
    x.set_data_from_numpy(np.ones(2))
    with pytest.raises(InferenceServerException) as unknown:
        client.infer("nope", [x])
    assert unknown.value.status() == "404" and "nope" in unknown.value.message()
    with pytest.raises(InferenceServerException) as bad:
        client.infer("linear", [x], parameters={"strategy": "magic"})
    assert bad.value.status() == "400" and "magic" in bad.value.message()
