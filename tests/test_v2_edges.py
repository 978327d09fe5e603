"""The Open Inference Protocol at its edges: options checked whichever outputs are asked,
framing errors that name the framing, and messages in v2's own words (the v2 audit)."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from app.api.v2.routes import error_body
from app.errors import ProblemDetails
from tests.support import HEADER, INFER, ClientFactory, assert_error, binary_input, tensor

pytestmark = pytest.mark.anyio

X3 = [tensor("x", [1.0, 2.0, 3.0])]
VALUES_ONLY = [{"name": "y"}]

# -- options are checked when the outputs ask for y alone (an evaluation) ---------------------


@pytest.mark.parametrize(("parameters", "needle"), [
    ({"strategy": "bogus"}, "unknown strategy 'bogus'"),
    ({"strategy": "foward"}, "did you mean 'forward'?"),
    ({"wrt": "Q"}, "wrt names 'Q', neither a parameter nor an input"),
    ({"wrt": "c"}, "wrt names 'c', neither a parameter nor an input"),
    ({"wrt": "C,C"}, "wrt names 'C' more than once"),
    ({"order": 3}, "order = 3; use 1 or 2"),
    ({"order": 7, "strategy": "bogus", "wrt": "Q"}, "use 1 or 2"),
    ({"cross": True}, "cross applies to second derivatives"),
])
async def test_options_are_refused_whichever_outputs_are_asked(
        client: httpx.AsyncClient, parameters: dict[str, object], needle: str) -> None:
    """They had been dropped unchecked when outputs asked for y alone (a 200 with values): a
    typo in a values-only call went unnoticed, and bit once a derivative was asked."""
    url = INFER.format("linear")
    every = assert_error(await client.post(url, json={"inputs": X3, "parameters": parameters}),
                         400, needle)
    values_only = assert_error(await client.post(url, json={
        "inputs": X3, "parameters": parameters, "outputs": VALUES_ONLY}), 400, needle)
    assert values_only == every


async def test_a_wrt_name_the_outputs_leave_out_is_checked(client: httpx.AsyncClient) -> None:
    r = await client.post(INFER.format("linear"), json={
        "inputs": X3, "parameters": {"wrt": "C,Q"}, "outputs": [{"name": "dy_dC"}]})
    assert_error(r, 400, "wrt names 'Q', neither a parameter nor an input", "parameters are: C")
    # valid options with values only still evaluate
    r = await client.post(INFER.format("linear"), json={
        "inputs": X3, "outputs": VALUES_ONLY,
        "parameters": {"C": 2.0, "strategy": "forward", "wrt": "C", "order": 2, "cross": True}})
    assert r.status_code == 200, r.text
    assert [o["data"] for o in r.json()["outputs"]] == [[2.0, 4.0, 6.0]]


async def test_a_strategy_turned_off_is_refused_for_values_only_too(
        make_client: ClientFactory) -> None:
    async with make_client(strategies="auto,forward,reverse-loop") as c:
        for outputs in (None, VALUES_ONLY):
            body: dict[str, object] = {"inputs": X3,
                                       "parameters": {"strategy": "finite-difference"}}
            if outputs is not None:
                body["outputs"] = outputs
            assert_error(await c.post(INFER.format("linear"), json=body), 400,
                         "finite-difference is turned off", "DYDC_STRATEGIES")


# -- framing --------------------------------------------------------------------------------

HEAD = json.dumps({"inputs": [binary_input("x", np.arange(3.0))]}).encode()
TENSOR = np.arange(3.0).tobytes()  # 1.0 is 00 .. f0 3f: not UTF-8


@pytest.mark.parametrize("lengths", [(len(HEAD), 5), (5, len(HEAD)), (len(HEAD), len(HEAD))])
async def test_two_header_lengths_are_400_naming_the_header(
        client: httpx.AsyncClient, lengths: tuple[int, int]) -> None:
    """The first had won, silently: the answer depended on the headers' order."""
    headers = [(HEADER, str(n)) for n in lengths]
    r = await client.post(INFER.format("linear"), content=HEAD + TENSOR, headers=headers)
    assert_error(r, 400, f"the request has 2 {HEADER} headers", "send one")


async def test_a_header_length_of_zero_names_the_header(client: httpx.AsyncClient) -> None:
    r = await client.post(INFER.format("linear"), content=HEAD + TENSOR, headers={HEADER: "0"})
    message = assert_error(r, 400, f"{HEADER} is 0", "cannot be empty",
                           f"{HEADER}: {len(HEAD)}")
    assert "request body is empty" not in message


def _cut_elsewhere(length: int) -> list[str]:
    return [f"the first {length} bytes of the body as {HEADER} says", "is not valid JSON",
            f"starts with a JSON object of {len(HEAD)} bytes; send {HEADER}: {len(HEAD)}"]


@pytest.mark.parametrize("length", [5, len(HEAD) - 1, len(HEAD) + 1, len(HEAD) + 9])
async def test_a_header_length_that_cuts_the_json_elsewhere_says_so(
        client: httpx.AsyncClient, length: int) -> None:
    r = await client.post(INFER.format("linear"), content=HEAD + TENSOR,
                          headers={HEADER: str(length)})
    assert_error(r, 400, *_cut_elsewhere(length))


@pytest.mark.parametrize("tensor_bytes", [TENSOR, bytes(24)], ids=["not-utf8", "zeros"])
async def test_binary_data_without_a_header_length_is_said_to_need_one(
        client: httpx.AsyncClient, tensor_bytes: bytes) -> None:
    """The commonest client mistake had been answered "request body is not UTF-8" (or "not
    valid JSON" for bytes that happen to be text)."""
    r = await client.post(INFER.format("linear"), content=HEAD + tensor_bytes,
                          headers={"Content-Type": "application/octet-stream"})
    message = assert_error(r, 400, f"a JSON object of {len(HEAD)} bytes followed by 24 bytes",
                           "look like binary tensor data", f"{HEADER}: {len(HEAD)}")
    assert "not UTF-8" not in message


async def test_the_framing_is_diagnosed_from_the_bodys_first_64_kib(
        client: httpx.AsyncClient) -> None:
    """The diagnosis parses again, so it reads a bounded start of the body: a JSON header that
    ends past 64 KiB gets no length hint (a whole 48 MB body parsed again in Python's json had
    held the event loop for seconds), one that ends within it does, whatever follows."""
    padded = json.dumps({"inputs": [binary_input("x", np.arange(3.0))],
                         "id": "p" * 70_000}).encode()
    for head, hinted in ((HEAD, True), (padded, False)):
        for length in ("0", "9"):
            r = await client.post(INFER.format("linear"), content=head + TENSOR * 100_000,
                                  headers={HEADER: length})
            message = assert_error(r, 400, HEADER if hinted or length == "0" else "not valid")
            assert (f"JSON object of {len(head)} bytes" in message) == hinted, message
    r = await client.post(INFER.format("linear"), content=HEAD + TENSOR * 100_000,
                          headers={"Content-Type": "application/octet-stream"})
    assert_error(r, 400, f"a JSON object of {len(HEAD)} bytes followed by 2400000 bytes",
                 f"{HEADER}: {len(HEAD)}")


@pytest.mark.parametrize("broken", [b'{"inputs": [],}', b"{'inputs': []}", b'\x1f\x8b\x08'])
async def test_a_broken_json_header_of_the_right_length_keeps_the_jsons_words(
        client: httpx.AsyncClient, broken: bytes) -> None:
    """The length is right and the JSON itself is broken: no "send its length" (it is sent),
    the JSON's own refusal (a gzip body's hint included)."""
    r = await client.post(INFER.format("linear"), content=broken + TENSOR,
                          headers={HEADER: str(len(broken))})
    message = assert_error(r, 400, "request body is not")
    assert f"send {HEADER}" not in message
    assert (broken.startswith(b"\x1f\x8b")) == ("gzip-compressed" in message), message


async def test_binary_bytes_after_json_without_sizes_are_told_both(
        client: httpx.AsyncClient) -> None:
    """A JSON body with no binary_data_size, then tensor bytes: the header length alone would
    not do (the bytes would be claimed by no input), so the message asks for the sizes too."""
    plain = json.dumps({"inputs": [{"name": "x", "datatype": "FP64", "shape": [3]}]}).encode()
    r = await client.post(INFER.format("linear"), content=plain + TENSOR,
                          headers={"Content-Type": "application/octet-stream"})
    assert_error(r, 400, f"{HEADER}: {len(plain)}", "parameters.binary_data_size")
    r = await client.post(INFER.format("linear"), content=HEAD + TENSOR,
                          headers={"Content-Type": "application/octet-stream"})
    assert "binary_data_size" not in assert_error(r, 400, f"{HEADER}: {len(HEAD)}")


async def test_a_json_error_the_framing_does_not_explain_keeps_its_words(
        client: httpx.AsyncClient) -> None:
    r = await client.post(INFER.format("linear"), content=HEAD + TENSOR, headers={HEADER: "7"})
    assert_error(r, 400, *_cut_elsewhere(7))  # (the framing explains this one)
    twice = b'{"inputs": [], "inputs": []}'
    r = await client.post(INFER.format("linear"), content=twice + TENSOR,
                          headers={HEADER: str(len(twice))})
    assert_error(r, 400, 'the key "inputs" twice')
    r = await client.post(INFER.format("linear"), content=b'{"inputs": [}')
    message = assert_error(r, 400, "request body is not valid JSON")
    assert HEADER not in message


# -- messages in v2's words ------------------------------------------------------------------

async def test_a_parameter_out_of_bounds_is_named_as_sent(client: httpx.AsyncClient) -> None:
    r = await client.post(INFER.format("softmax"), json={
        "inputs": [tensor("x", [1.0, 2.0, 3.0], shape=[1, 3])], "parameters": {"T": -1.0}})
    message = assert_error(r, 400, "parameters.T = -1.0 is outside its bounds [0.0, inf]")
    assert "params." not in message
    r = await client.post(INFER.format("black_scholes_call"), json={
        "inputs": [tensor("x", [100, 100, 1] * 2, shape=[2, 3]), tensor("sigma", [0.2, -0.1])]})
    message = assert_error(r, 400, "input sigma element 1 = -0.1 is outside its bounds")
    assert "params." not in message


async def test_a_parameter_too_large_for_float32_names_the_datatype_to_send(
        client: httpx.AsyncClient) -> None:
    r = await client.post(INFER.format("linear"), json={
        "inputs": [tensor("x", [1.0], "FP32")], "parameters": {"C": 1e39}})
    message = assert_error(r, 400, "parameters.C = 1e+39 is not finite in float32",
                           "send the inputs as FP64")
    assert "dtype" not in message


async def test_a_tensor_of_zero_samples_is_said_to_have_zero(client: httpx.AsyncClient) -> None:
    r = await client.post(INFER.format("linear"), json={
        "inputs": [{"name": "x", "datatype": "FP64", "shape": [0], "data": []}]})
    message = assert_error(r, 400, "input x (inputs[0]) has shape [0]: 0 samples")
    assert "inputs is empty" not in message


EXPRESSION = INFER.format("expression")


async def test_expression_model_messages_are_in_v2_terms(client: httpx.AsyncClient) -> None:
    r = await client.post(EXPRESSION, json={
        "parameters": {"expression": "2*x0", "inputs": "x0"}, "inputs": [tensor("x0", [1.0])]})
    message = assert_error(r, 400, "the expression has no parameter",
                           "a number in parameters, or an input tensor named after it")
    assert "params:" not in message
    r = await client.post(EXPRESSION, json={
        "parameters": {"expression": "C*x0", "inputs": "x0", "C": 1.0},
        "inputs": [tensor("x0", [1.0])], "outputs": [{"name": "zz"}]})
    message = assert_error(r, 400, "outputs[0] is 'zz': model expression has no such output")
    assert "expression-" not in message
    r = await client.post(EXPRESSION, json={
        "parameters": {"expression": "C*x0 +", "inputs": "x0", "C": 1.0},
        "inputs": [tensor("x0", [1.0])]})
    assert_error(r, 400, "parameters.expression: ")
    r = await client.post(EXPRESSION, json={
        "parameters": {"expression": "C*x0", "inputs": "x0, 1x", "C": 1.0},
        "inputs": [tensor("x0", [1.0])]})
    message = assert_error(r, 400, "parameters.inputs: '1x' is not a name")
    assert "inputs.names" not in message


async def test_a_whole_float_dimension_counts_against_the_sample_limit(
        make_client: ClientFactory) -> None:
    """orjson reads 11.0, and integers past 2**64, as floats: they had skipped the 413 (and
    2**64 had been a 400 about the data count); a count of 1e300 is said in 6 characters,
    not 301."""
    async with make_client(max_samples=10) as c:
        for dim, shown in ((11.0, "11"), (2**64, "1.84e+19"), (1e300, "1e+300")):
            r = await c.post(INFER.format("linear"), json={
                "inputs": [{"name": "x", "datatype": "FP64", "shape": [dim], "data": [1.0]}]})
            assert_error(r, 413, f"an input has shape [{shown}, ...]", "DYDC_MAX_SAMPLES")


async def test_an_unknown_model_lists_the_expression_model(client: httpx.AsyncClient) -> None:
    for r in (await client.get("/v2/models/nope"),
              await client.post(INFER.format("nope"), json={"inputs": X3})):
        message = assert_error(r, 404, "no model named 'nope'; the models are: ")
        assert "expression" in message.split("the models are: ")[1].split(", ")
        assert "linear" in message


def test_the_cost_refusal_says_the_units_of_both_deadlines() -> None:
    detail = ("this job is estimated at 9 s of device time, more than its deadline leaves "
              "(1 s): raise timeout_ms (at most DYDC_REQUEST_TIMEOUT_MS), send fewer samples")
    error = json.loads(error_body(ProblemDetails(422, detail)))["error"]
    assert "raise parameters.timeout (in microseconds; at most the server's " \
           "DYDC_REQUEST_TIMEOUT_MS, which is in milliseconds)" in error
    assert "timeout_ms" not in error


# -- cosmetics -------------------------------------------------------------------------------

@pytest.mark.parametrize(("size", "shown"), [(True, "true"), ("24", '"24"')])
async def test_a_binary_data_size_that_is_no_count_is_shown_as_json(
        client: httpx.AsyncClient, size: object, shown: str) -> None:
    doc = {"inputs": [{**binary_input("x", np.arange(3.0)),
                       "parameters": {"binary_data_size": size}}]}
    head = json.dumps(doc).encode()
    r = await client.post(INFER.format("linear"), content=head + TENSOR,
                          headers={HEADER: str(len(head))})
    assert_error(r, 400, f"binary_data_size is {shown}; send a byte count")


async def test_an_empty_name_or_datatype_is_shown(client: httpx.AsyncClient) -> None:
    r = await client.post(INFER.format("linear"), json={"inputs": [tensor("", [1.0])]})
    assert_error(r, 400, 'inputs are named ""; model linear takes')
    r = await client.post(INFER.format("linear"), json={"inputs": [tensor("x", [1.0], "")]})
    assert_error(r, 400, 'inputs[0] (x) is ""; this model takes FP64 or FP32')


async def test_a_null_parameter_has_no_pydantic_prefix(client: httpx.AsyncClient) -> None:
    r = await client.post(INFER.format("linear"), json={"inputs": X3, "parameters": {"C": None}})
    message = assert_error(r, 400, "parameters.C: is null; a parameter is a string")
    assert "Value error" not in message


async def test_deeply_nested_data_is_echoed_capped(client: httpx.AsyncClient) -> None:
    data = "[" * 1000 + "1.0" + "]" * 1000  # (deeper than Python's json writes)
    body = '{"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": DATA}]}'
    r = await client.post(INFER.format("linear"), content=body.replace("DATA", data))
    message = assert_error(r, 400, "nested as [1, 1, 1, 1, 1, 1, 1, 1, ... (1000 dimensions)]",
                           "but its shape is [1]")
    assert len(message) < 300, message
