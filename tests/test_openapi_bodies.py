"""The computation bodies in the OpenAPI document say what the service accepts
(app.api.openapi_bodies): every example is answered 200, and the names, enums and bounds
are those of the routines served and of the settings. (tests/test_contract.py has
schemathesis generate bodies from them.)"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

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
