"""What the client sends and reads for the parts of the contract the service is still growing
(issue 12: order 2, cross terms, per-sample parameters, input sensitivities, checks, bump
settings, compare; issue 13: API keys, request ids), against stubs that assert the request's
shape as the contract writes it and answer as the contract shapes it."""

from __future__ import annotations

import json
from typing import Any

import dydc
import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.anyio

BLACK_SCHOLES = {
    "name": "black_scholes_call", "description": "call", "inputs": ["S", "K", "T"],
    "outputs": ["price"], "vectorized": False,
    "params": [{"name": "sigma", "default": 0.2, "description": "vol", "bounds": [0.0, None]},
               {"name": "r", "default": 0.05, "description": "rate"}],
}
X = np.array([[49.0, 50.0, 0.3846], [100.0, 95.0, 0.5], [80.0, 90.0, 1.0]])
SIGMA = np.array([0.2, 0.3, 0.25])


def _catalogue(request: httpx.Request) -> httpx.Response | None:
    if request.url.path == "/v1/limits":
        return httpx.Response(200, json={"max_samples": 2, "max_body_bytes": 1 << 20,
                                         "strategy_caps": {}})
    if request.url.path == "/v1/routines/black_scholes_call":
        return httpx.Response(200, json=BLACK_SCHOLES)
    return None


def _column(values: np.ndarray) -> list[float]:
    return [float(v) for v in values]


def test_order_two_per_sample_check_and_bump_over_json() -> None:
    """Body fields ``order``, ``cross``, ``wrt`` with an input, ``params`` lists; query
    ``check``, ``shift``, ``shift_type``, ``scheme``; answers split in two chunks and merged."""
    seen: list[tuple[dict[str, str], dict[str, Any]]] = []

    def stub(request: httpx.Request) -> httpx.Response:
        if (answer := _catalogue(request)) is not None:
            return answer
        assert request.url.path == "/v1/routines/black_scholes_call/sensitivities"
        assert request.headers["Content-Type"] == "application/json"
        assert request.headers["Authorization"] == "Bearer k1"
        body = json.loads(request.content)
        query = dict(request.url.params)
        seen.append((query, body))
        n = len(body["inputs"])
        s = np.asarray(body["params"]["sigma"])
        first = float(np.asarray(body["inputs"])[0, 0])
        return httpx.Response(200, headers={"X-Request-ID": f"id-{len(seen)}"}, json={
            "routine": "black_scholes_call", "strategy": "finite-difference",
            "dtype": "float64", "device": "cpu", "n": n, "outputs": ["price"],
            "params": body["params"], "values": _column(s * 10),
            "derivatives": {"S": _column(s + 1), "sigma": _column(s + 2)},
            "second_derivatives": {"S,S": _column(s + 3), "S,sigma": _column(s + 4),
                                   "sigma,sigma": _column(s + 5)},
            "check": {"strategy": "finite-difference",
                      "max_abs_diff": {"S": first * 1e-9, "S,sigma": 1e-6},
                      "max_rel_diff": {"S": 1e-10, "S,sigma": first * 1e-7}},
            "bump": {"shift": 1e-4, "shift_type": "relative", "scheme": "central"},
            "timing_ms": {"queue": 0.5, "compute": 2.0, "total": 3.0},
        })

    with dydc.Client("http://stub", api_key="k1", protocol="json",
                     transport=httpx.MockTransport(stub)) as client:
        result = client.sensitivities(
            "black_scholes_call", {"S": X[:, 0], "K": X[:, 1], "T": X[:, 2]},
            {"sigma": SIGMA, "r": 0.05}, wrt=["S", "sigma"], order=2, cross=True,
            strategy="finite-difference", check=True,
            bump={"shift": 1e-4, "shift_type": "relative", "scheme": "central"})
    assert len(seen) == 2  # max_samples is 2: chunks of 2 and 1
    for query, body in seen:
        assert query == {"strategy": "finite-difference", "check": "finite-difference",
                         "shift": "0.0001", "shift_type": "relative", "scheme": "central"}
        assert body["wrt"] == ["S", "sigma"] and body["order"] == 2 and body["cross"] is True
        assert body["params"]["r"] == 0.05
    assert seen[0][1]["params"]["sigma"] == [0.2, 0.3] and seen[1][1]["params"]["sigma"] == [0.25]
    assert seen[0][1]["inputs"] == X[:2].tolist() and seen[1][1]["inputs"] == X[2:].tolist()
    np.testing.assert_array_equal(result.values, SIGMA * 10)
    assert list(result.derivatives) == ["S", "sigma"]
    np.testing.assert_array_equal(result.derivatives["sigma"], SIGMA + 2)
    assert list(result.second_derivatives) == ["S,S", "S,sigma", "sigma,sigma"]
    np.testing.assert_array_equal(result.second_derivatives["S,sigma"], SIGMA + 4)
    assert result.check is not None and result.check.strategy == "finite-difference"
    assert result.check.max_abs_diff["S"] == pytest.approx(80.0 * 1e-9)  # the worse chunk: 80 > 49
    assert result.check.max_rel_diff["S,sigma"] == pytest.approx(80.0 * 1e-7)
    assert result.bump == dydc.Bump(1e-4, "relative", "central")
    assert result.params["sigma"] == SIGMA.tolist() and result.chunks == 2
    assert result.timing_ms is not None and result.timing_ms["compute"] == 4.0
    assert result.request_id == "id-1"


def test_order_one_sends_no_new_fields() -> None:
    """An order-1 request carries only today's fields, so the client works with any service."""
    bodies: list[dict[str, Any]] = []

    def stub(request: httpx.Request) -> httpx.Response:
        if (answer := _catalogue(request)) is not None:
            return answer
        bodies.append(json.loads(request.content))
        assert dict(request.url.params) == {"strategy": "auto"}
        return httpx.Response(200, json={"routine": "black_scholes_call", "values": [1.0],
                                         "derivatives": {"sigma": [2.0]}, "n": 1})

    with dydc.Client("http://stub", protocol="json", transport=httpx.MockTransport(stub)) as c:
        c.sensitivities("black_scholes_call", X[:1], {"sigma": 0.2})
    assert bodies == [{"inputs": X[:1].tolist(), "params": {"sigma": 0.2}}]


def _binary_response(header: dict[str, Any], arrays: dict[str, np.ndarray]) -> httpx.Response:
    outputs = [{"name": name, "datatype": "FP64", "shape": list(a.shape),
                "parameters": {"binary_data_size": a.nbytes}} for name, a in arrays.items()]
    head = json.dumps({**header, "outputs": outputs}).encode()
    return httpx.Response(200, content=head + b"".join(a.astype("<f8").tobytes()
                                                       for a in arrays.values()),
                          headers={"Inference-Header-Content-Length": str(len(head)),
                                   "Content-Type": "application/octet-stream"})


async def test_order_two_per_sample_over_binary() -> None:
    """v2: the samples as ``x`` [N, 3], the per-sample parameter as a tensor named after it
    ([N]), ``wrt``/``order``/``cross`` in the parameters; ``d2y_d<a>_d<b>`` read back as
    ``"a,b"``."""
    headers: list[dict[str, Any]] = []

    def stub(request: httpx.Request) -> httpx.Response:
        if (answer := _catalogue(request)) is not None:
            return answer
        assert request.url.path == "/v2/models/black_scholes_call/infer"
        length = int(request.headers["Inference-Header-Content-Length"])
        header = json.loads(request.content[:length])
        headers.append(header)
        data = request.content[length:]
        x_spec, sigma_spec = header["inputs"]
        assert (x_spec["name"], x_spec["datatype"]) == ("x", "FP64")
        assert (sigma_spec["name"], sigma_spec["datatype"]) == ("sigma", "FP64")
        x = np.frombuffer(data[:x_spec["parameters"]["binary_data_size"]], "<f8")
        x = x.reshape(x_spec["shape"])
        sigma = np.frombuffer(data[x.nbytes:], "<f8")
        assert sigma_spec["shape"] == [len(x)] and len(sigma) == len(x)
        return _binary_response(
            {"model_name": "black_scholes_call", "model_version": "1",
             "parameters": {"strategy": "forward", "device": "cpu"}},
            {"y": x[:, 0] * sigma, "dy_dS": sigma, "dy_dsigma": x[:, 0],
             "d2y_dS_dS": np.zeros(len(x)), "d2y_dS_dsigma": np.ones(len(x)),
             "d2y_dsigma_dsigma": sigma * 0})

    async with dydc.AsyncClient("http://stub", protocol="binary",
                                transport=httpx.MockTransport(stub)) as client:
        result = await client.sensitivities("black_scholes_call", X, {"sigma": SIGMA, "r": 0.01},
                                            wrt="S,sigma", order=2, cross=True,
                                            timeout_ms=250)
    assert len(headers) == 2
    assert headers[0]["parameters"] == {"r": 0.01, "binary_data_output": True,
                                        "strategy": "auto", "wrt": "S,sigma", "order": 2,
                                        "cross": True, "timeout": 250000.0}
    assert result.protocol == "binary" and result.strategy == "forward" and result.n == 3
    np.testing.assert_array_equal(result.values, X[:, 0] * SIGMA)
    np.testing.assert_array_equal(result.derivatives["S"], SIGMA)
    np.testing.assert_array_equal(result.derivatives["sigma"], X[:, 0])
    assert set(result.second_derivatives) == {"S,S", "S,sigma", "sigma,sigma"}
    np.testing.assert_array_equal(result.second_derivatives["S,sigma"], np.ones(3))
    result.values[0] = 0.0  # writable, not a view of the response


def test_binary_falls_back_to_json_for_checks() -> None:
    paths: list[str] = []

    def stub(request: httpx.Request) -> httpx.Response:
        if (answer := _catalogue(request)) is not None:
            return answer
        paths.append(request.url.path)
        return httpx.Response(200, json={"routine": "black_scholes_call", "n": 1,
                                         "values": [1.0], "derivatives": {"sigma": [1.0]}})

    with dydc.Client("http://stub", protocol="binary", transport=httpx.MockTransport(stub)) as c:
        assert c.sensitivities("black_scholes_call", X[:1], check="finite-difference"
                               ).protocol == "json"
        c.sensitivities("black_scholes_call", X[:1], bump=dydc.Bump(shift=1e-3))
    assert paths == ["/v1/routines/black_scholes_call/sensitivities"] * 2


def test_compare() -> None:
    def stub(request: httpx.Request) -> httpx.Response:
        if (answer := _catalogue(request)) is not None:
            return answer
        assert request.url.path == "/v1/routines/black_scholes_call/compare"
        body = json.loads(request.content)
        assert body == {"inputs": X.tolist(), "params": {"sigma": SIGMA.tolist()},
                        "wrt": ["sigma"], "order": 2}
        assert "strategy" not in request.url.params  # compare runs them all
        return httpx.Response(200, json={
            "routine": "black_scholes_call", "n": 3, "order": 2, "reference": "forward",
            "strategies": [
                {"strategy": "forward", "status": "ok", "reason": None, "time_ms": 1.5,
                 "max_abs_diff": {"sigma": 0.0, "sigma,sigma": 0.0},
                 "max_rel_diff": {"sigma": 0.0, "sigma,sigma": 0.0}},
                {"strategy": "reverse-loop", "status": "skipped",
                 "reason": "N over the cap", "time_ms": None, "max_abs_diff": {},
                 "max_rel_diff": {}},
                {"strategy": "forward-dual", "status": "failed",
                 "reason": "cannot nest", "time_ms": 0.2, "max_abs_diff": {},
                 "max_rel_diff": {}}],
            "values": [1.0, 2.0, 3.0], "derivatives": {"sigma": [4.0, 5.0, 6.0]},
            "second_derivatives": {"sigma,sigma": [7.0, 8.0, 9.0]}})

    with dydc.Client("http://stub", transport=httpx.MockTransport(stub)) as c:
        comparison = c.compare("black_scholes_call", X, {"sigma": SIGMA}, ["sigma"], order=2)
    assert isinstance(comparison, dydc.Comparison)
    assert (comparison.n, comparison.order, comparison.reference) == (3, 2, "forward")
    rows = comparison.strategies
    assert all(isinstance(r, dydc.StrategyRow) for r in rows)
    assert [(r.strategy, r.status) for r in rows] == [
        ("forward", "ok"), ("reverse-loop", "skipped"), ("forward-dual", "failed")]
    assert rows[0].time_ms == 1.5 and rows[1].reason == "N over the cap"
    assert rows[0].max_rel_diff == {"sigma": 0.0, "sigma,sigma": 0.0}
    np.testing.assert_array_equal(comparison.second_derivatives["sigma,sigma"], [7, 8, 9])


def test_upload_progress() -> None:
    reports: list[tuple[int, int]] = []

    def stub(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/limits":
            return httpx.Response(404, json={"detail": "no such route"})  # an older service
        request.read()
        n = len(json.loads(request.content)["inputs"])
        return httpx.Response(200, json={"routine": "linear", "n": n, "values": [0.0] * n})

    x = np.linspace(0, 1, 200_000)
    with dydc.Client("http://stub", protocol="json", progress=lambda s, t: reports.append((s, t)),
                     transport=httpx.MockTransport(stub)) as c:
        result = c.evaluate("linear", x)
    assert result.n == 200_000 and result.chunks == 1  # no limits known: sent whole
    total = reports[-1][1]
    assert reports[-1] == (total, total) and total > 2 << 20
    assert len(reports) == -(-total // (1 << 20))  # a report per MiB
    assert [s for s, _ in reports] == sorted(s for s, _ in reports)
