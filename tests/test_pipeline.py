"""One pipeline, three codecs: the same good and bad requests through v1 JSON, v2 JSON and
v2 binary, each through the dispatcher and through FastAPI's routes, give the same status
(v2's 400 where v1 says 422) and the same numbers."""

from __future__ import annotations

import math
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import numpy as np
import orjson
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from app.config import Settings
from app.main import create_app

pytestmark = pytest.mark.anyio

HEADER = "Inference-Header-Content-Length"


@dataclass(frozen=True)
class Case:
    routine: str
    inputs: list[Any]  # N rows of D (or N numbers)
    params: dict[str, float]
    wrt: list[str] | None = None
    strategy: str = "auto"
    dtype: str = "float64"


CASES: list[Case] = [
    Case("linear", list(range(10)), {"C": -5.0}, ["C"]),
    Case("linear", [1.5, 2.5], {"C": 2.0}, strategy="jacfwd"),
    Case("linear", [1.5, 2.5, -1.0], {"C": 2.0}, strategy="reverse-loop"),
    Case("exponential_decay", [[2.0, 1.0], [1.0, 0.5]], {"k": 0.7}, strategy="vmap-grad"),
    Case("black_scholes_call", [[100.0, 95.0, 0.5], [90.0, 100.0, 2.0]],
         {"sigma": 0.3, "r": 0.02}, ["sigma", "r"], strategy="forward"),
    Case("black_scholes_call", [[100.0, 95.0, 0.5]], {"sigma": 0.3}, ["r"], dtype="float32"),
    Case("softmax", [[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]], {"T": 0.5},
         strategy="finite-difference"),
    Case("logistic_growth", [[10.0, 1.0], [20.0, 2.0]], {"r": 0.3, "K": 100.0},
         strategy="reverse-batched"),
    # bad ones
    Case("nope", [1.0], {}),
    Case("linear", [1.0], {}, strategy="backwards"),
    Case("linear", [1.0], {"D": 1.0}),
    Case("linear", [1.0], {}, ["D"]),
    Case("linear", [1.0, math.nan], {"C": 1.0}),
    Case("linear", [1.0], {"C": math.inf}),
    Case("black_scholes_call", [[1.0, 2.0, 3.0]], {"sigma": -1.0}),
    Case("linear", [float(i) for i in range(40)], {}, strategy="reverse-loop"),  # cap is 30
    Case("linear", [float(i) for i in range(60)], {}),  # DYDC_MAX_SAMPLES is 50
    Case("logistic_growth", [[0.0, 1.0]], {"r": 0.3}),  # N0 = 0: non-finite values
]


def _v1(case: Case) -> tuple[str, dict[str, Any]]:
    body: dict[str, Any] = {"inputs": case.inputs, "params": case.params, "dtype": case.dtype}
    if case.wrt is not None:
        body["wrt"] = case.wrt
    return (f"/v1/routines/{case.routine}/sensitivities?strategy={case.strategy}",
            {"content": orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
             if not _non_finite(case) else _json_with_non_finite(body),
             "headers": {"content-type": "application/json"}})


def _non_finite(case: Case) -> bool:
    return any(not math.isfinite(v) for v in np.ravel(case.inputs)) or any(
        not math.isfinite(v) for v in case.params.values())


def _json_with_non_finite(body: dict[str, Any]) -> bytes:
    import json

    return json.dumps(body).encode()


def _v2_parameters(case: Case) -> dict[str, Any]:
    parameters: dict[str, Any] = {**case.params, "strategy": case.strategy}
    if case.wrt is not None:
        parameters["wrt"] = ",".join(case.wrt)
    return parameters


def _datatype(case: Case) -> str:
    return "FP64" if case.dtype == "float64" else "FP32"


def _v2_json(case: Case) -> tuple[str, dict[str, Any]]:
    x = np.asarray(case.inputs, dtype=np.float64)
    body = {"inputs": [{"name": "x", "datatype": _datatype(case), "shape": list(x.shape),
                        "data": x.reshape(-1).tolist()}],
            "parameters": _v2_parameters(case)}
    return f"/v2/models/{case.routine}/infer", {
        "content": _json_with_non_finite(body), "headers": {"content-type": "application/json"}}


def _v2_binary(case: Case) -> tuple[str, dict[str, Any]]:
    x = np.asarray(case.inputs, dtype=np.float64 if case.dtype == "float64" else np.float32)
    raw = x.astype(x.dtype.newbyteorder("<")).tobytes()
    header = orjson.dumps({
        "inputs": [{"name": "x", "datatype": _datatype(case), "shape": list(x.shape),
                    "parameters": {"binary_data_size": len(raw)}}],
        "parameters": {**_v2_parameters(case), "binary_data_output": True}},
        option=orjson.OPT_NON_STR_KEYS) if all(
        math.isfinite(v) for v in case.params.values()) else _json_with_non_finite({
            "inputs": [{"name": "x", "datatype": _datatype(case), "shape": list(x.shape),
                        "parameters": {"binary_data_size": len(raw)}}],
            "parameters": {**_v2_parameters(case), "binary_data_output": True}})
    return f"/v2/models/{case.routine}/infer", {
        "content": header + raw,
        "headers": {HEADER: str(len(header)), "content-type": "application/octet-stream"}}


def _numbers_v1(r: httpx.Response) -> dict[str, np.ndarray]:
    body = r.json()
    out = {"y": np.asarray(body["values"], dtype=np.float64)}
    out |= {f"dy_d{k}": np.asarray(v, dtype=np.float64) for k, v in body["derivatives"].items()}
    return out


def _numbers_v2(r: httpx.Response) -> dict[str, np.ndarray]:
    length = r.headers.get(HEADER)
    if length is None:
        doc = r.json()
        return {o["name"]: np.asarray(o["data"], dtype=np.float64).reshape(o["shape"])
                for o in doc["outputs"]}
    doc = orjson.loads(r.content[:int(length)])
    out, offset = {}, int(length)
    for o in doc["outputs"]:
        size = o["parameters"]["binary_data_size"]
        fmt = "<d" if o["datatype"] == "FP64" else "<f"
        count = size // struct.calcsize(fmt)
        values = struct.unpack(f"<{count}{fmt[1]}", r.content[offset:offset + size])
        out[o["name"]] = np.asarray(values, dtype=np.float64).reshape(o["shape"])
        offset += size
    return out


@dataclass
class Clients:
    dispatched: httpx.AsyncClient
    framework: httpx.AsyncClient


@pytest.fixture(scope="module")
async def clients() -> AsyncIterator[Clients]:
    application = create_app(Settings(device="cpu", max_samples=50, reverse_loop_max_n=30))

    async def framework(scope: Scope, receive: Receive, send: Send) -> None:
        await FastAPI.__call__(application, scope, receive, send)

    async with LifespanManager(application, startup_timeout=60, shutdown_timeout=60):
        base = "http://dydc.test"
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=application),
                                     base_url=base, timeout=60) as a, \
                httpx.AsyncClient(transport=httpx.ASGITransport(app=framework),
                                  base_url=base, timeout=60) as b:
            with anyio.fail_after(60):
                while (ready := await a.get("/readyz")).status_code != 200:
                    await anyio.sleep(0.02)
            assert ready.json()["status"] == "ready"
            yield Clients(a, b)


@pytest.mark.parametrize("case", CASES, ids=[f"{i}-{c.routine}-{c.strategy}"
                                             for i, c in enumerate(CASES)])
async def test_every_protocol_and_route_agrees(clients: Clients, case: Case) -> None:
    answers: dict[str, httpx.Response] = {}
    for protocol, build in (("v1", _v1), ("v2-json", _v2_json), ("v2-binary", _v2_binary)):
        path, kwargs = build(case)
        for route, client in (("dispatched", clients.dispatched),
                              ("framework", clients.framework)):
            answers[f"{protocol} {route}"] = await client.post(path, **kwargs)
    v1 = answers["v1 dispatched"]
    assert v1.status_code < 500, v1.text
    expected_v2 = 400 if v1.status_code == 422 else v1.status_code
    for name, r in answers.items():
        want = v1.status_code if name.startswith("v1") else expected_v2
        assert r.status_code == want, (name, r.text, v1.text)
        if r.status_code != 200:
            assert r.headers["content-type"] == (
                "application/problem+json" if name.startswith("v1") else "application/json")
    if v1.status_code != 200:
        detail = v1.json()["detail"]
        for name, r in answers.items():
            message = r.json()["detail" if name.startswith("v1") else "error"]
            if not name.startswith("v1"):  # v2 names its parameters as its request does
                message = message.replace("parameters.", "params.")
            # the same diagnosis, up to how each protocol names the element
            assert message.split(";")[0][-20:] == detail.split(";")[0][-20:] or r.status_code in (
                404, 413), (name, message, detail)
        return
    reference = _numbers_v1(v1)
    rtol = 1e-12 if case.dtype == "float64" else 1e-6
    for name, r in answers.items():
        got = _numbers_v1(r) if name.startswith("v1") else _numbers_v2(r)
        assert set(got) == set(reference), name
        for key, want in reference.items():
            np.testing.assert_allclose(got[key].reshape(want.shape), want, rtol=rtol,
                                       atol=1e-300, err_msg=f"{name} {key}")
