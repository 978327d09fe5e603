"""The Open Inference Protocol in its JSON form: metadata, health, inference, errors."""

from __future__ import annotations

import json
import math

import httpx
import pytest

from tests.support import INFER, assert_error, tensor
from tests.support.clients import ClientFactory

pytestmark = pytest.mark.anyio

async def test_server_metadata_and_health(client: httpx.AsyncClient) -> None:
    meta = (await client.get("/v2")).json()
    assert meta["name"] == "dydc" and meta["version"]
    assert "binary_tensor_data" in meta["extensions"]
    assert (await client.get("/v2/health/live")).json() == {"live": True}
    r = await client.get("/v2/health/ready")
    assert r.status_code == 200 and r.json() == {"ready": True}


async def test_model_metadata_and_readiness(client: httpx.AsyncClient) -> None:
    for url in ["/v2/models/damped_oscillator", "/v2/models/damped_oscillator/versions/1"]:
        meta = (await client.get(url)).json()
        assert meta["name"] == "damped_oscillator" and meta["versions"] == ["1"]
        assert meta["inputs"] == [{"name": "t", "datatype": "FP64", "shape": [-1]}]
        assert [o["name"] for o in meta["outputs"]] == ["y", "dy_dgamma", "dy_domega"]
        assert {tuple(o["shape"]) for o in meta["outputs"]} == {(-1,)}
    softmax = (await client.get("/v2/models/softmax")).json()
    assert [i["name"] for i in softmax["inputs"]] == ["z1", "z2", "z3"]
    assert softmax["outputs"][0]["shape"] == [-1, 3]
    for url in ["/v2/models/linear/ready", "/v2/models/linear/versions/1/ready"]:
        r = await client.get(url)
        assert r.status_code == 200 and r.json() == {"name": "linear", "ready": True}


async def test_forum_example(client: httpx.AsyncClient) -> None:
    body = {"id": "forum-1", "inputs": [tensor("x", list(range(10)))],
            "parameters": {"C": -5.0, "strategy": "forward", "wrt": "C"}}
    r = await client.post(INFER.format("linear"), json=body)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    doc = r.json()
    assert doc["id"] == "forum-1" and doc["model_name"] == "linear"
    assert doc["parameters"]["strategy"] == "forward"
    y, dy = doc["outputs"]
    assert y == {"name": "y", "datatype": "FP64", "shape": [10],
                 "data": [-5.0 * i for i in range(10)]}
    assert dy == {"name": "dy_dC", "datatype": "FP64", "shape": [10],
                  "data": [float(i) for i in range(10)]}


async def test_two_parameters_closed_form(client: httpx.AsyncClient) -> None:
    t = [0.0, 0.5, 1.0, 2.5, 7.0]
    gamma, omega = 0.3, 2.0
    r = await client.post(INFER.format("damped_oscillator") + "", json={
        "inputs": [tensor("t", t, shape=[5, 1])], "parameters": {"gamma": gamma, "omega": omega}})
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert list(out) == ["y", "dy_dgamma", "dy_domega"]
    for i, ti in enumerate(t):
        y = math.exp(-gamma * ti) * math.cos(omega * ti)
        assert out["y"]["data"][i] == pytest.approx(y, rel=1e-12, abs=1e-15)
        assert out["dy_dgamma"]["data"][i] == pytest.approx(-ti * y, rel=1e-12, abs=1e-15)
        assert out["dy_domega"]["data"][i] == pytest.approx(
            -ti * math.exp(-gamma * ti) * math.sin(omega * ti), rel=1e-12, abs=1e-15)


async def test_inputs_per_feature_or_as_x(client: httpx.AsyncClient) -> None:
    rows = [[1.0, 0.5], [2.0, 1.5], [3.0, 0.0]]
    per_feature = {"inputs": [tensor("t", [r[1] for r in rows]),
                              tensor("y0", [r[0] for r in rows])], "parameters": {"k": 0.7}}
    as_matrix = {"inputs": [tensor("x", [v for r in rows for v in r], shape=[3, 2])],
                 "parameters": {"k": 0.7}}
    nested = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [3, 2], "data": rows}],
              "parameters": {"k": 0.7}}
    docs = []
    for body in (per_feature, as_matrix, nested):
        r = await client.post(INFER.format("exponential_decay"), json=body)
        assert r.status_code == 200, r.text
        docs.append(r.json()["outputs"])
    assert docs[0] == docs[1] == docs[2]
    for (y0, t), y, dk in zip(rows, docs[0][0]["data"], docs[0][1]["data"], strict=True):
        assert y == pytest.approx(y0 * math.exp(-0.7 * t), rel=1e-12)
        assert dk == pytest.approx(-t * y0 * math.exp(-0.7 * t), rel=1e-12, abs=1e-15)


async def test_output_selection_and_multi_output_shape(client: httpx.AsyncClient) -> None:
    z = [[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]
    body = {"inputs": [tensor("x", [v for r in z for v in r], shape=[2, 3])],
            "outputs": [{"name": "dy_dT"}], "parameters": {"T": 2.0}}
    r = await client.post(INFER.format("softmax"), json=body)
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    assert out["name"] == "dy_dT" and out["shape"] == [2, 3]
    assert out["data"][3:] == pytest.approx([0.0, 0.0, 0.0], abs=1e-15)
    # only y: evaluated without derivatives
    body["outputs"] = [{"name": "y"}]
    answer = await client.post(INFER.format("softmax"), json=body)
    doc = answer.json()
    assert [o["name"] for o in doc["outputs"]] == ["y"] and "strategy" not in doc["parameters"]
    assert doc["outputs"][0]["data"][3:] == pytest.approx([1 / 3] * 3, rel=1e-12)
    assert doc["id"] == answer.headers["x-request-id"]  # no id sent: the request's X-Request-ID


async def test_wrt_narrows_outputs(client: httpx.AsyncClient) -> None:
    for wrt in ("omega", ["omega"]):
        r = await client.post(INFER.format("damped_oscillator"), json={
            "inputs": [tensor("t", [1.0, 2.0])], "parameters": {"wrt": wrt}})
        assert [o["name"] for o in r.json()["outputs"]] == ["y", "dy_domega"]


async def test_fp32_round_trip(client: httpx.AsyncClient) -> None:
    r = await client.post(INFER.format("linear"), json={
        "inputs": [tensor("x", [0.1, 1.5, 3.0], "FP32")], "parameters": {"C": 2.0}})
    assert r.status_code == 200, r.text
    y, dy = r.json()["outputs"]
    assert y["datatype"] == dy["datatype"] == "FP32"
    assert y["data"] == pytest.approx([0.2, 3.0, 6.0], rel=1e-7)
    assert dy["data"] == pytest.approx([0.1, 1.5, 3.0], rel=1e-7)


async def test_versions_path(client: httpx.AsyncClient) -> None:
    body = {"inputs": [tensor("x", [1.0])], "parameters": {"C": 3.0}}
    r = await client.post("/v2/models/linear/versions/1/infer", json=body)
    assert r.status_code == 200 and r.json()["model_version"] == "1"
    assert_error(await client.post("/v2/models/linear/versions/2/infer", json=body), 404, "'2'")
    assert_error(await client.get("/v2/models/linear/versions/7"), 404, "'7'")


async def test_unknown_model_and_path_are_404(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/v2/models/nope"), 404, "'nope'", "linear")
    assert_error(await client.get("/v2/models/nope/ready"), 404, "'nope'")
    assert_error(await client.post(INFER.format("nope"), json={"inputs": []}), 404, "'nope'")
    assert_error(await client.get("/v2/nothing"), 404, "/v2/nothing")
    assert_error(await client.get(INFER.format("linear")), 405, "GET")


X1 = [tensor("x", [1.0, 2.0])]


@pytest.mark.parametrize(
    ("routine", "body", "needles"),
    [
        ("linear", {"inputs": X1, "parameters": {"strategy": "magic"}}, ["'magic'", "forward"]),
        ("linear", {"inputs": X1, "parameters": {"D": 1.0}}, ["'D'", "C"]),
        ("linear", {"inputs": X1, "parameters": {"C": "2"}}, ["parameters.C", "numbers"]),
        ("linear", {"inputs": X1, "parameters": {"C": True}}, ["parameters.C"]),
        ("linear", {"inputs": X1, "parameters": {"wrt": "D"}}, ["'D'", "C"]),
        ("linear", {"inputs": X1, "parameters": {"wrt": 3}}, ["parameters.wrt"]),
        ("linear", {"inputs": X1, "parameters": {"wrt": ""}}, ["parameters.wrt names nothing"]),
        ("linear", {"inputs": X1, "parameters": {"wrt": " , "}}, ["names nothing", "output y"]),
        ("linear", {"inputs": X1, "parameters": {"wrt": []}}, ["names nothing"]),
        ("linear", {"inputs": X1, "parameters": {"wrt": "C,,x"}},
         ["parameters.wrt = 'C,,x' has an empty name between two commas"]),
        ("linear", {"inputs": X1, "parameters": {"binary_data_output": 1}}, ["binary_data_output"]),
        ("linear", {"inputs": X1, "parameters": {"timeout": -1}}, ["parameters.timeout"]),
        ("linear", {"inputs": X1, "parameters": {"timeout": "1s"}}, ["microseconds"]),
        ("linear", {"inputs": X1, "outputs": [{"name": "z"}]}, ["'z'", "y, dy_dC"]),
        ("linear", {"inputs": X1, "outputs": []}, ["outputs is empty", "y, dy_dC"]),
        ("linear", {"inputs": X1, "outputs": [{"name": "y", "parameters": {"classification": 2}}]},
         ["'classification'", "binary_tensor_data"]),
        ("linear", {"inputs": X1, "outputs": [
            {"name": "y", "parameters": {"shared_memory_region": "r", "binary_data": True}}]},
         ["'shared_memory_region'"]),
        ("linear", {"inputs": X1, "parameters": {"C": None}}, ["parameters.C", "is null",
                                                               "a string, a number"]),
        ("black_scholes_call", {"inputs": [tensor("x", [100, 100, 1], shape=[1, 3])],
                                "parameters": {"sigma": [0.1]}}, ["parameters.sigma",
                                                                  "input tensor named after"]),
        # data nested otherwise than its shape says (flat data takes any shape)
        ("black_scholes_call", {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP64",
                                            "data": [[100, 100, 1, 100], [100, 2]]}]},
         ["inputs[0] (x).data is ragged"]),
        ("black_scholes_call", {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP64",
                                            "data": [[100, 100], [1, 100], [100, 2]]}]},
         ["nested as [3, 2] but its shape is [2, 3]"]),
        ("black_scholes_call", {"inputs": [tensor("x", [100, 100, 1] * 3, shape=[3, 3]),
                                           tensor("sigma", [0.1, 0.2])]},
         ["input sigma", "shape [2], but the inputs have 3 samples", "send shape [3]"]),
        # a parameter tensor twice: the last had won
        ("black_scholes_call", {"inputs": [tensor("x", [100, 100, 1], shape=[1, 3]),
                                           tensor("sigma", [0.1]), tensor("sigma", [0.5])]},
         ["parameter tensor sigma twice"]),
        ("damped_oscillator", {"inputs": [tensor("t", [1.0])], "parameters": {"wrt": "gamma"},
                               "outputs": [{"name": "dy_domega"}]}, ["wrt is gamma"]),
        ("linear", {"inputs": X1, "outputs": [{"name": "y"}, {"name": "y"}]}, ["twice"]),
        ("linear", {"inputs": X1, "outputs": [{"name": "y", "parameters": {"binary_data": "yes"}}]},
         ["binary_data"]),
        ("linear", {"inputs": []}, ["empty"]),
        ("linear", {"inputs": [tensor("q", [1.0])]}, ["named q", "one tensor x"]),
        ("exponential_decay", {"inputs": [tensor("y0", [1.0])]}, ["named y0", "y0, t"]),
        ("exponential_decay", {"inputs": [tensor("y0", [1.0]), tensor("t", [1.0, 2.0])]},
         ["different batch sizes"]),
        ("exponential_decay", {"inputs": [tensor("x", [1.0, 2.0], shape=[1, 2]),
                                          tensor("x", [1.0, 2.0], shape=[1, 2])]}, ["twice"]),
        ("exponential_decay", {"inputs": [tensor("x", [1.0, 2.0, 3.0], shape=[1, 3])]},
         ["shape [1, 3]", "[N, 2]"]),
        ("linear", {"inputs": [tensor("x", [1.0, 2.0], shape=[1, 2])]}, ["shape [1, 2]"]),
        ("linear", {"inputs": [tensor("x", [1.0, 2.0], shape=[3])]}, ["holds 3", "has 2"]),
        ("linear", {"inputs": [tensor("x", [1.0, "2"])]}, ['data[1] (flattened) is "2"']),
        ("linear", {"inputs": [tensor("x", [1.0, None])]}, ["data[1] (flattened) is null"]),
        ("linear", {"inputs": [tensor("x", [1.0, True])]}, ["is true"]),
        ("linear", {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": "1"}]},
         ["list"]),
        ("linear", {"inputs": [tensor("x", [1.0], "INT64")]}, ["INT64", "FP64 or FP32"]),
        ("exponential_decay", {"inputs": [tensor("y0", [1.0]), tensor("t", [1.0], "FP32")]},
         ["mix FP32 and FP64"]),
        # a non-finite input named by its tensor and element (not v1's inputs[i][j])
        ("linear", {"inputs": [tensor("x", [1.0, 1e39], "FP32")]},
         ["input x (inputs[0]) element 1 is 1e+39, which overflows float32"]),

        ("linear", {"inputs": [{"name": "x", "datatype": "FP64", "shape": [-1], "data": [1]}]},
         ["inputs.0.shape.0"]),
        ("linear", {"inputs": [{"name": "x", "shape": [1], "data": [1]}]}, ["datatype"]),
        ("linear", {"id": 7, "inputs": X1}, ["id"]),
        ("linear", {"parameters": {"C": 1}}, ["inputs"]),
        ("black_scholes_call", {"inputs": [tensor("x", [100, 100, -1], shape=[1, 3])]},
         ["sample 0", "non-finite"]),  # a negative time to expiry
    ],
)
async def test_bad_requests_are_400(client: httpx.AsyncClient, routine: str, body: object,
                                    needles: list[str]) -> None:
    assert_error(await client.post(INFER.format(routine), json=body), 400, *needles)


@pytest.mark.parametrize("raw", [b"", b"{", b"[1, 2]", b"\xff\xfe"])
async def test_malformed_json_is_400(client: httpx.AsyncClient, raw: bytes) -> None:
    assert_error(await client.post(INFER.format("linear"), content=raw), 400)


async def test_metrics_count_v2_statuses(client: httpx.AsyncClient) -> None:
    await client.post(INFER.format("linear"), json={"inputs": []})
    scrape = (await client.get("/metrics")).text
    assert 'dydc_requests_total{routine="linear",status="400",strategy="auto"}' in scrape
    assert 'endpoint="infer"' in scrape


async def test_triton_timeout_and_priority_parameters(client: httpx.AsyncClient) -> None:
    r = await client.post(INFER.format("linear"), json={
        "inputs": X1, "parameters": {"C": 2.0, "timeout": 5_000_000, "priority": 1}})
    assert r.status_code == 200, r.text
    outputs = {o["name"]: o["data"] for o in r.json()["outputs"]}
    assert outputs == {"y": [2.0, 4.0], "dy_dC": [1.0, 2.0]}


async def test_only_an_inputs_declared_shape_counts_against_the_sample_limit(
        make_client: ClientFactory) -> None:
    async with make_client(max_samples=10) as c:
        over = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [11], "data": [1.0]}]}
        assert_error(await c.post(INFER.format("linear"), json=over), 413,
                     "shape [11, ...]", "DYDC_MAX_SAMPLES")
        # a "shape" elsewhere in the body is not an input's (it had been refused as one)
        r = await c.post(INFER.format("linear"), json={"inputs": X1, "meta": {"shape": [11]}})
        assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [1.0, 2.0]
        assert_error(await c.post(INFER.format("linear"),
                                  json={"inputs": X1, "parameters": {"shape": [11]}}),
                     400, "parameters.shape")


async def test_an_empty_id_is_echoed(client: httpx.AsyncClient) -> None:
    doc = (await client.post(INFER.format("linear"), json={"id": "", "inputs": X1})).json()
    assert doc["id"] == ""


@pytest.mark.parametrize(("body", "needle"), [
    ({"inputs": [tensor("S", [100, 90]), tensor("K", [100, 100]), tensor("T", [1.0, math.inf])]},
     "input T (inputs[2]) element 1 is not finite in float64"),
    ({"inputs": [tensor("sigma", [0.1, 0.2]),
                 tensor("x", [100, 100, 1, 100, 100, math.nan], shape=[2, 3])]},
     "input x (inputs[1]) element [1, 2] is not finite in float64"),
])
async def test_a_non_finite_input_is_named_by_its_tensor_and_element(
        client: httpx.AsyncClient, body: dict[str, object], needle: str) -> None:
    # (NaN and Infinity as Python's json writes them, which the service reads)
    answer = await client.post(INFER.format("black_scholes_call"), content=json.dumps(body),
                               headers={"Content-Type": "application/json"})
    assert_error(answer, 400, needle)


LONE = "\\ud800"  # JSON's escape of a lone surrogate, which UTF-8 cannot carry


def _with_lone(id_: str = "q", name: str = "x", datatype: str = "FP64") -> str:
    tensor_ = '{"name": "NAME", "datatype": "TYPE", "shape": [1], "data": [2]}'
    tensor_ = tensor_.replace("NAME", name).replace("TYPE", datatype)
    return '{"id": "ID", "inputs": [TENSOR]}'.replace("ID", id_).replace("TENSOR", tensor_)


@pytest.mark.parametrize(("body", "status", "needle"), [
    (_with_lone(id_=LONE), 200, f'"id":"{LONE}"'),
    (_with_lone(name=LONE), 400, f"inputs are named {LONE}"),
    (_with_lone(datatype=LONE), 400, f"inputs[0] (x) is {LONE}"),
])
async def test_a_lone_surrogate_is_echoed_escaped_not_a_500(
        client: httpx.AsyncClient, body: str, status: int, needle: str) -> None:
    """A string the answer repeats (the id, or an error naming the client's input) is written
    with the escape the client sent: orjson refuses it, and that had been a 500."""
    answer = await client.post(INFER.format("linear"), content=body.encode(),
                               headers={"Content-Type": "application/json"})
    assert answer.status_code == status and needle in answer.text, answer.text
    assert answer.json()  # valid JSON
