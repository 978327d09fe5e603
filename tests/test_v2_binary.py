"""Triton's binary tensor data extension: round trips, and every way the framing can be wrong."""

from __future__ import annotations

import json
import math

import httpx
import numpy as np
import pytest

from tests.support import HEADER, INFER, ClientFactory, assert_error, binary_input, frame, unframe

pytestmark = pytest.mark.anyio

@pytest.mark.parametrize(("datatype", "dtype", "rtol"), [("FP64", np.float64, 1e-15),
                                                          ("FP32", np.float32, 1e-6)])
async def test_round_trip(client: httpx.AsyncClient, datatype: str, dtype: type,
                          rtol: float) -> None:
    t = np.linspace(0.0, 6.0, 13, dtype=dtype)
    gamma, omega = 0.25, 1.5
    body, headers = frame({"id": "b1", "inputs": [binary_input("t", t, datatype)],
                           "parameters": {"gamma": gamma, "omega": omega,
                                          "binary_data_output": True}}, t)
    r = await client.post(INFER.format("damped_oscillator"), content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    doc, out = unframe(r)
    assert doc["id"] == "b1"
    assert all(a.dtype == dtype and a.shape == (13,) for a in out.values())
    t64 = t.astype(np.float64)
    y = np.exp(-gamma * t64) * np.cos(omega * t64)
    np.testing.assert_allclose(out["y"], y, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(out["dy_dgamma"], -t64 * y, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(out["dy_domega"],
                               -t64 * np.exp(-gamma * t64) * np.sin(omega * t64),
                               rtol=rtol, atol=rtol * 10)


async def test_mixed_binary_and_json_per_input_and_output(client: httpx.AsyncClient) -> None:
    y0 = np.array([1.0, 2.0, 4.0])
    t = [0.0, 1.0, 2.0]
    doc = {"inputs": [binary_input("y0", y0),
                      {"name": "t", "datatype": "FP64", "shape": [3], "data": t}],
           "outputs": [{"name": "dy_dk", "parameters": {"binary_data": True}},
                       {"name": "y"}],
           "parameters": {"k": 0.5}}
    body, headers = frame(doc, y0)
    r = await client.post(INFER.format("exponential_decay"), content=body, headers=headers)
    assert r.status_code == 200, r.text
    length = int(r.headers[HEADER])
    head = json.loads(r.content[:length])
    dk_meta, y_meta = head["outputs"]
    assert dk_meta["parameters"] == {"binary_data_size": 24} and "data" not in dk_meta
    expected = [a * math.exp(-0.5 * b) for a, b in zip(y0, t, strict=True)]
    assert y_meta["data"] == pytest.approx(expected)
    dk = np.frombuffer(r.content[length:], "<f8")
    np.testing.assert_allclose(dk, -np.array(t) * y0 * np.exp(-0.5 * np.array(t)), rtol=1e-15)


async def test_x_matrix_in_binary(client: httpx.AsyncClient) -> None:
    x = np.array([[1.0, 0.5], [2.0, 1.5]])
    body, headers = frame({"inputs": [binary_input("x", x)], "outputs": [{"name": "y"}],
                           "parameters": {"k": 1.0}}, x)
    r = await client.post(INFER.format("exponential_decay"), content=body, headers=headers)
    doc = r.json()  # no binary output asked: plain JSON, no header
    assert HEADER not in r.headers
    assert doc["outputs"][0]["data"] == pytest.approx(x[:, 0] * np.exp(-x[:, 1]), rel=1e-15)


async def test_every_alignment_of_the_binary_part(client: httpx.AsyncClient) -> None:
    x = np.arange(5, dtype=np.float64)
    for pad in range(8):  # JSON headers of every length mod 8
        doc = {"id": "p" * pad, "inputs": [binary_input("x", x)], "parameters": {"C": -5.0},
               "outputs": [{"name": "dy_dC"}]}
        body, headers = frame(doc, x)
        r = await client.post(INFER.format("linear"), content=body, headers=headers)
        assert r.json()["outputs"][0]["data"] == x.tolist()


X = np.arange(4, dtype=np.float64)
GOOD = {"inputs": [binary_input("x", X)]}


@pytest.mark.parametrize(
    ("body", "header", "needles"),
    [
        # the header length is past the body, or is not a number
        (json.dumps(GOOD).encode() + X.tobytes(), "100000", ["100000", "only"]),
        (json.dumps(GOOD).encode() + X.tobytes(), "-3", ['"-3"']),
        (json.dumps(GOOD).encode() + X.tobytes(), "ten", ['"ten"']),
        # the header length cuts the JSON
        (json.dumps(GOOD).encode() + X.tobytes(), "10", ["JSON"]),
        # sizes that do not add up: too few bytes, too many bytes
        (json.dumps(GOOD).encode() + X.tobytes()[:-1], None, ["add up to 32", "only 31"]),
        (json.dumps(GOOD).encode() + X.tobytes() + b"\0", None, ["33 bytes follow", "up to 32"]),
        # a shape that disagrees with the byte count
        (json.dumps({"inputs": [{**binary_input("x", X), "shape": [5]}]}).encode() + X.tobytes(),
         None, ["shape [5]", "40 bytes", "binary_data_size is 32"]),
        (json.dumps({"inputs": [{**binary_input("x", X), "datatype": "FP32"}]}).encode()
         + X.tobytes(), None, ["FP32", "16 bytes", "is 32"]),
        # a size that is not a byte count, or both data and bytes
        (json.dumps({"inputs": [{**binary_input("x", X), "parameters": {"binary_data_size": -1}}]}
                    ).encode(), None, ["binary_data_size is -1"]),
        (json.dumps({"inputs": [{**binary_input("x", X), "parameters": {"binary_data_size": 1.5}}]}
                    ).encode(), None, ["binary_data_size is 1.5"]),
        (json.dumps({"inputs": [{**binary_input("x", X), "data": [1, 2, 3, 4]}]}).encode()
         + X.tobytes(), None, ["both data and binary_data_size"]),
    ],
)
async def test_malformed_framing_is_400(client: httpx.AsyncClient, body: bytes,
                                        header: str | None, needles: list[str]) -> None:
    if header is None:  # the header length of the JSON part, as a client computes it
        header = str(body.index(b"}]}") + 3)
    r = await client.post(INFER.format("linear"), content=body, headers={HEADER: header})
    assert_error(r, 400, *needles)


@pytest.mark.parametrize("header", [b"\xb2", b"\xb9\xb2", "\u0663".encode()])
async def test_a_header_length_in_digits_that_are_not_ascii_is_400(
        client: httpx.AsyncClient, header: bytes) -> None:
    """Superscript two (Latin-1 0xB2) and Arabic-Indic three are digits to str.isdigit but
    not to int(): still the client's malformed framing, not the server's error."""
    body = json.dumps(GOOD).encode() + X.tobytes()
    r = await client.post(INFER.format("linear"), content=body, headers={HEADER: header})
    assert_error(r, 400, HEADER, "byte length")


async def test_binary_data_without_header_length_is_400(client: httpx.AsyncClient) -> None:
    r = await client.post(INFER.format("linear"), content=json.dumps(GOOD).encode())
    assert_error(r, 400, "no Inference-Header-Content-Length")
    r = await client.post(INFER.format("linear"), content=json.dumps(GOOD).encode() + X.tobytes())
    assert_error(r, 400, "JSON")


async def test_body_limit_is_413_with_error_object(make_client: ClientFactory) -> None:
    async with make_client(max_body_bytes=1000) as c:
        x = np.arange(200, dtype=np.float64)
        body, headers = frame({"inputs": [binary_input("x", x)]}, x)
        assert_error(await c.post(INFER.format("linear"), content=body, headers=headers), 413,
                     "DYDC_MAX_BODY_BYTES")

        async def chunks():  # no Content-Length: the limit must hold while streaming
            yield body

        assert_error(await c.post(INFER.format("linear"), content=chunks(), headers=headers),
                     413, "DYDC_MAX_BODY_BYTES")


async def test_multi_output_model_in_binary(client: httpx.AsyncClient) -> None:
    z = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    body, headers = frame({"inputs": [binary_input("x", z)],
                           "parameters": {"binary_data_output": True}}, z)
    _doc, out = unframe(await client.post(INFER.format("softmax"), content=body, headers=headers))
    assert out["y"].shape == out["dy_dT"].shape == (2, 3)
    e = np.exp(z[0])
    np.testing.assert_allclose(out["y"][0], e / e.sum(), rtol=1e-15)
    np.testing.assert_allclose(out["y"][1], [1 / 3] * 3, rtol=1e-15)


async def test_a_header_length_of_many_digits_is_400_and_leading_zeros_are_taken(
        client: httpx.AsyncClient) -> None:
    """int() refuses 4,300 digits and more (a 500, 'Exceeds the limit'); zeros before a
    length are still that length."""
    header = json.dumps(GOOD).encode()
    body = header + X.tobytes()
    for digits in ("1" * 5000, "9" * 19):
        r = await client.post(INFER.format("linear"), content=body, headers={HEADER: digits})
        assert_error(r, 400, HEADER, "digits")
    r = await client.post(INFER.format("linear"), content=body,
                          headers={HEADER: "0" * 4300 + str(len(header))})
    assert r.status_code == 200, r.text
