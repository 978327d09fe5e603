"""The computation bodies in the OpenAPI document say what the service accepts
(app.api.openapi_bodies): every example is answered 200, and the names, enums and bounds
are those of the routines served and of the settings. (tests/test_contract.py has
schemathesis generate bodies from them.)"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from tests.support import ClientFactory

pytestmark = pytest.mark.anyio

V1 = ("sensitivities", "evaluate", "compare")
V2 = ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer")


def body(doc: dict[str, Any], path: str) -> dict[str, Any]:
    media: dict[str, Any] = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]
    return media


@pytest.fixture(scope="module")
async def doc(client: httpx.AsyncClient) -> dict[str, Any]:
    document: dict[str, Any] = (await client.get("/openapi.json")).json()
    return document


@pytest.mark.parametrize("endpoint", V1)
async def test_every_v1_example_is_accepted(
    client: httpx.AsyncClient, doc: dict[str, Any], endpoint: str
) -> None:
    examples = body(doc, f"/v1/routines/{{name}}/{endpoint}")["examples"]
    assert len(examples) == 8
    for name, example in examples.items():
        r = await client.post(f"/v1/routines/{name}/{endpoint}", json=example["value"])
        assert r.status_code == 200, (name, r.text)


@pytest.mark.parametrize("path", V2)
async def test_every_v2_example_is_accepted(
    client: httpx.AsyncClient, doc: dict[str, Any], path: str
) -> None:
    examples = body(doc, path)["examples"]
    assert len(examples) == 8
    for name, example in examples.items():
        r = await client.post(path.format(name=name, version="1"), json=example["value"])
        assert r.status_code == 200, (name, r.text)


async def test_v1_names_bounds_and_widths(doc: dict[str, Any]) -> None:
    schema = body(doc, "/v1/routines/{name}/compare")["schema"]["properties"]
    flat, *rows = schema["inputs"]["anyOf"]
    assert flat["maxItems"] == 2_000_000
    assert [(r["items"]["minItems"], r["items"]["maxItems"]) for r in rows] == [
        (1, 1),
        (2, 2),
        (3, 3),
    ]
    names, text = (option for option in schema["wrt"]["anyOf"] if option["type"] != "null")
    assert {"sigma", "C", "S", "z3"} <= set(names["items"]["enum"])
    assert "sigma" in schema["params"]["propertyNames"]["enum"]
    assert "S" not in schema["params"]["propertyNames"]["enum"]  # a feature, not a parameter
    assert schema["order"]["enum"] == [1, 2]
    assert re.search(text["pattern"], "sigma, r")
    assert not re.search(text["pattern"], "sigma, bogus")


async def test_v2_names_bounds_and_parameters(doc: dict[str, Any]) -> None:
    given = doc["components"]["schemas"]["RequestInput"]
    assert given["properties"]["datatype"]["enum"] == ["FP64", "FP32"]
    assert given["properties"]["shape"]["maxItems"] == 2
    assert given["properties"]["shape"]["items"]["maximum"] == 2_000_000
    assert {"x", "S", "sigma"} <= set(given["properties"]["name"]["enum"])
    assert "data" in given["required"]
    outputs = doc["components"]["schemas"]["RequestOutput"]["properties"]["name"]["enum"]
    assert {"y", "dy_dsigma", "d2y_dsigma_dr"} <= set(outputs)
    parameters = body(doc, V2[0])["schema"]["properties"]["parameters"]
    assert parameters["properties"]["timeout"]["minimum"] == 1000
    assert parameters["properties"]["order"]["enum"] == [1, 2]
    assert parameters["properties"]["sigma"] == {"type": "number"}
    assert parameters["additionalProperties"] is False


async def test_a_v2_dimension_written_as_a_whole_float(client: httpx.AsyncClient) -> None:
    """JSON Schema's integer includes 2.0: the service takes it as 2 (and refuses 2.5)."""
    tensor = {"name": "x", "shape": [2.0], "datatype": "FP64", "data": [1.0, 2.0]}
    r = await client.post("/v2/models/linear/infer", json={"inputs": [tensor]})
    assert r.status_code == 200, r.text
    r = await client.post("/v2/models/linear/infer", json={"inputs": [{**tensor, "shape": [2.5]}]})
    assert r.status_code == 400 and "inputs.0.shape.0" in r.json()["error"]


async def test_the_relative_difference_may_be_null(doc: dict[str, Any]) -> None:
    """max |a - b| / max |b| is infinite where b is 0 and a is not: JSON's null."""
    for model in ("CheckInfo", "CompareRow"):
        rel = doc["components"]["schemas"][model]["properties"]["max_rel_diff"]
        assert {"type": "null"} in rel["additionalProperties"]["anyOf"]


EXPRESSIONS = ("sensitivities", "evaluate", "compare", "scenarios")


@pytest.mark.parametrize("endpoint", EXPRESSIONS)
async def test_an_expression_body_is_one_of_expression_and_ode(
    doc: dict[str, Any], endpoint: str
) -> None:
    schema = body(doc, f"/v1/expressions/{endpoint}")["schema"]
    assert [option["required"] for option in schema["oneOf"]] == [["expression"], ["ode"]]
    # an explicit null is left out, as the service reads it
    assert {"type": "null"} in schema["properties"]["expression"]["anyOf"]
    assert schema["oneOf"][0]["properties"]["expression"]["type"] == ["string", "array"]


async def test_an_expression_names_are_identifiers(
    client: httpx.AsyncClient, doc: dict[str, Any]
) -> None:
    names = doc["components"]["schemas"]["ExpressionInputs"]["properties"]["names"]
    params = body(doc, "/v1/expressions/evaluate")["schema"]["properties"]["params"]
    state = doc["components"]["schemas"]["OdeBody"]["properties"]["state"]
    for name in (names["items"], params["propertyNames"], state):
        assert re.search(name["pattern"], "N0_t") and re.search(name["pattern"], "_x")
        assert not any(re.search(name["pattern"], bad) for bad in ("0", "x y", "", "é", "x-1"))
        assert {"if", "None", "pi", "e"} <= set(name["not"]["enum"])
    assert names["uniqueItems"] is True
    # what the document says is what the service refuses
    given = {"expression": "C * x", "inputs": {"names": ["0"], "values": [1.0]},
             "params": {"C": 2.0}}
    r = await client.post("/v1/expressions/evaluate", json=given)
    assert r.status_code == 422 and "'0' is not a name" in r.json()["detail"], r.text


async def test_an_expression_sample_bounds_follow_the_settings(
    make_client: ClientFactory,
) -> None:
    async with make_client(max_samples=7, expression_max_ode_steps=50,
                           expression_max_chars=300) as c:
        doc = (await c.get("/openapi.json")).json()
    values = doc["components"]["schemas"]["ExpressionInputs"]["properties"]["values"]
    assert [option["maxItems"] for option in values["anyOf"]] == [7, 7]
    assert doc["components"]["schemas"]["OdeBody"]["properties"]["steps"]["maximum"] == 50
    for endpoint in EXPRESSIONS:
        fields = body(doc, f"/v1/expressions/{endpoint}")["schema"]["properties"]
        per_sample = [o for o in fields["params"]["additionalProperties"]["anyOf"]
                      if o.get("type") == "array"]
        assert [(o["minItems"], o["maxItems"]) for o in per_sample] == [(1, 7)]
        text, texts, _ = fields["expression"]["anyOf"]
        assert text["maxLength"] == texts["items"]["maxLength"] == 300


async def test_v2_priority_is_a_whole_number(
    client: httpx.AsyncClient, doc: dict[str, Any]
) -> None:
    """Triton's priority is read and has no effect; what is not a level is refused, as the
    other parameters are (1.5 and "high" had been taken)."""
    parameters = body(doc, V2[0])["schema"]["properties"]["parameters"]["properties"]
    assert parameters["priority"]["type"] == "integer" and parameters["priority"]["minimum"] == 0
    tensor = {"name": "x", "shape": [1], "datatype": "FP64", "data": [1.0]}
    for path in ("/v2/models/linear/infer", "/v2/models/linear/versions/1/infer"):
        for level in (0, 3, 2.0):
            r = await client.post(path, json={"inputs": [tensor],
                                              "parameters": {"priority": level}})
            assert r.status_code == 200, (level, r.text)
        for bad in (1.5, "high", -1, True):
            r = await client.post(path, json={"inputs": [tensor],
                                              "parameters": {"priority": bad}})
            assert r.status_code == 400, (bad, r.text)
            assert r.json()["error"].startswith("parameters.priority: is "), r.text
