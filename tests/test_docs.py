"""The interactive docs work offline and say what each route takes (app.api.docs,
app.api.openapi)."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from swagger_ui_bundle import swagger_ui_path

pytestmark = pytest.mark.anyio

SENS = "/v1/routines/{name}/sensitivities"
EVAL = "/v1/routines/{name}/evaluate"
INFER = "/v2/models/{name}/infer"


async def _doc(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    doc: dict[str, Any] = r.json()
    return doc


async def test_docs_page_loads_nothing_from_elsewhere(client: httpx.AsyncClient) -> None:
    page = await client.get("/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    urls = re.findall(r"""(?:src|href|url)\s*[:=]\s*['"]([^'"]+)['"]""", page.text)
    assert urls, page.text
    assert all(u.startswith("/") and not u.startswith("//") for u in urls), urls
    assert "cdn" not in page.text.lower()
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"):
        r = await client.get(f"/docs/assets/{asset}", headers={"accept-encoding": "identity"})
        assert r.status_code == 200, asset
        with open(f"{swagger_ui_path}/{asset}", "rb") as f:
            assert r.content == f.read()
    assert (await client.get("/docs/oauth2-redirect")).status_code == 200
    assert (await client.get("/redoc")).status_code == 404  # ReDoc would need a CDN


async def test_routine_names_are_an_enum(client: httpx.AsyncClient) -> None:
    doc = await _doc(client)
    names = sorted(r["name"] for r in (await client.get("/v1/routines")).json()["routines"])
    assert "linear" in names
    for path in (SENS, EVAL, "/v1/routines/{name}", INFER, "/v2/models/{name}",
                 "/v2/models/{name}/ready"):
        for op in doc["paths"][path].values():
            (param,) = [p for p in op["parameters"] if p["name"] == "name"]
            assert param["schema"]["enum"] == names, path


async def test_one_working_example_per_routine(client: httpx.AsyncClient) -> None:
    doc = await _doc(client)
    routines = {r["name"]: r for r in (await client.get("/v1/routines")).json()["routines"]}
    for path in (SENS, EVAL):
        media = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        assert set(media["examples"]) == set(routines)
        for name, example in media["examples"].items():
            body = example["value"]
            assert set(body["params"]) == {p["name"] for p in routines[name]["params"]}
            r = await client.post(path.format(name=name), json=body)  # "Try it out"
            assert r.status_code == 200, (name, r.text)
            assert r.json()["routine"] == name and r.json()["n"] == 3


async def test_descriptions_are_escaped(client: httpx.AsyncClient) -> None:
    text = (await client.get("/openapi.json")).text
    assert "dy/d&lt;param&gt;" in text
    assert "<param>" not in text


async def test_contract_details(client: httpx.AsyncClient) -> None:
    doc = await _doc(client)
    for path in (SENS, EVAL):
        op = doc["paths"][path]["post"]
        assert {"404", "413", "415", "422", "503", "504"} <= set(op["responses"])
        assert op["requestBody"]["required"] is True
        schema = op["requestBody"]["content"]["application/json"]["schema"]
        if "$ref" in schema:
            schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        inputs = schema["properties"]["inputs"]["anyOf"]
        assert all(alt["minItems"] == 1 for alt in inputs)
        wrt = schema["properties"]["wrt"]["anyOf"][0]
        assert wrt["items"]["minLength"] == 1
    infer = doc["paths"][INFER]["post"]
    assert infer["requestBody"]["required"] is True
    request = infer["requestBody"]["content"]["application/json"]["schema"]
    assert request["required"] == ["inputs"] and request["properties"]["inputs"]["minItems"] == 1
    assert "application/octet-stream" in infer["requestBody"]["content"]
    assert infer["responses"]["200"]["content"]["application/json"]["schema"]["$ref"] == \
        "#/components/schemas/InferenceResponse"
    assert {"RequestInput", "RequestOutput", "InferenceResponse", "ResponseOutput"} <= set(
        doc["components"]["schemas"])
    assert {"400", "404", "413", "415", "503", "504"} <= set(infer["responses"])


async def test_what_the_schema_refuses_the_service_refuses(client: httpx.AsyncClient) -> None:
    for body in ({"inputs": []}, {"inputs": [1], "wrt": [""]}):
        r = await client.post("/v1/routines/linear/sensitivities", json=body)
        assert r.status_code == 422, (body, r.text)
    r = await client.post("/v2/models/linear/infer", content=b"",
                          headers={"content-type": "application/json"})
    assert r.status_code == 400 and "empty" in r.json()["error"]
