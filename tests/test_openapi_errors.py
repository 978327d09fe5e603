"""Every answer is declared in the OpenAPI document the service serves (app.api.openapi and
the routes' response declarations): real answers of each kind, errors above all, each checked
against the document of the app that gave it: its status, its content type, and a schema its
body validates against. (tests/test_contract.py has schemathesis check generated requests;
it skips a response whose schema is missing, which is what these catch.)"""

from __future__ import annotations

import gzip
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from app.engine import Engine
from tests.support import ClientFactory

pytestmark = pytest.mark.anyio

JSON = {"Content-Type": "application/json"}
X = {"name": "x", "datatype": "FP64", "shape": [1], "data": [1.0]}
INFER = "/v2/models/{name}/infer"
INFER_VERSION = "/v2/models/{name}/versions/{version}/infer"
SENSITIVITIES = "/v1/routines/{name}/sensitivities"
_DOC = "urn:dydc:openapi"
# one more header field than DYDC_MAX_HEADERS allows (431, from the header check)
HEADER_FLOOD = {f"X-Field-{i}": "1" for i in range(101)}


def _media(content_type: str) -> tuple[str, set[str]]:
    """A media type and its parameters, lower case and without spaces."""
    kind, *parameters = (p.strip().lower().replace(" ", "") for p in content_type.split(";"))
    return kind, {p for p in parameters if p}


def _pointer(*parts: str) -> str:
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


def assert_declared(doc: dict[str, Any], method: str, template: str, r: httpx.Response) -> None:
    """``r``, answered to ``method`` on a path of ``template``, is declared in ``doc``: its
    status, a media type whose parameters are among the answer's, and a schema that its body
    validates against (a string, for a body that is not JSON)."""
    where = f"{method} {template} -> {r.status_code}"
    responses = doc["paths"][template][method.lower()]["responses"]
    status = str(r.status_code)
    assert status in responses, f"{where}: not declared (only {sorted(responses)})"
    kind, parameters = _media(r.headers["content-type"])
    content = responses[status].get("content", {})
    keys = [k for k in content if _media(k)[0] == kind and _media(k)[1] <= parameters]
    assert keys, f"{where}: {r.headers['content-type']} is not among {sorted(content)}"
    schema = content[keys[0]].get("schema")
    assert schema, f"{where}: {keys[0]} has no schema"
    if not kind.endswith("json"):
        assert schema.get("type") == "string", f"{where}: {schema}"
        return
    registry: Registry[Any] = Registry().with_resource(
        _DOC, Resource.from_contents(doc, default_specification=DRAFT202012))
    located = {"$ref": _DOC + "#" + _pointer("paths", template, method.lower(), "responses",
                                              status, "content", keys[0], "schema")}
    errors = [f"{list(e.absolute_path)}: {e.message}"
              for e in Draft202012Validator(located, registry=registry).iter_errors(r.json())]
    assert not errors, f"{where}: {r.text[:300]}\n" + "\n".join(errors)


@pytest.fixture(scope="module")
async def doc(client: httpx.AsyncClient) -> dict[str, Any]:
    document: dict[str, Any] = (await client.get("/openapi.json")).json()
    return document


# (method, template, path, request options, the status it gets)
ANSWERS: list[tuple[str, str, str, dict[str, Any], int]] = [
    # v1: problem details
    ("POST", SENSITIVITIES, "/v1/routines/linear/sensitivities", {"json": {"inputs": []}}, 422),
    ("POST", SENSITIVITIES, "/v1/routines/linear/sensitivities?timeout_ms=0",
     {"json": {"inputs": [1.0]}}, 422),
    ("POST", "/v1/routines/{name}/evaluate", "/v1/routines/linear/evaluate",
     {"json": {"inputs": "x"}}, 422),
    ("POST", "/v1/expressions/sensitivities", "/v1/expressions/sensitivities",
     {"json": {"expression": "C.x", "inputs": {"names": ["x"], "values": [[1.0]]},
               "params": {"C": 2.0}}}, 422),
    ("POST", SENSITIVITIES, "/v1/routines/nope/sensitivities", {"json": {"inputs": [1.0]}},
     404),
    ("GET", "/v1/routines/{name}", "/v1/routines/nope", {}, 404),
    ("POST", SENSITIVITIES, "/v1/routines/linear/sensitivities",
     {"content": b'{"inputs": [1]}', "headers": {"Content-Type": "text/plain"}}, 415),
    ("POST", SENSITIVITIES, "/v1/routines/linear/sensitivities",
     {"content": gzip.compress(b'{"inputs": [1, 2, 3]}') + b"garbage",
      "headers": {**JSON, "Content-Encoding": "gzip"}}, 400),
    ("POST", SENSITIVITIES, "/v1/routines/linear/sensitivities",
     {"json": {"inputs": [1.0]}, "headers": HEADER_FLOOD}, 431),
    # v2: {"error"}
    ("POST", INFER, "/v2/models/linear/infer", {"json": {"inputs": []}}, 400),
    ("POST", INFER, "/v2/models/nope/infer", {"json": {"inputs": [X]}}, 404),
    ("POST", INFER_VERSION, "/v2/models/linear/versions/2/infer", {"json": {"inputs": [X]}},
     404),
    ("GET", "/v2/models/{name}", "/v2/models/nope", {}, 404),
    ("GET", "/v2/models/{name}/versions/{version}/ready", "/v2/models/linear/versions/x/ready",
     {}, 404),
    ("POST", INFER, "/v2/models/linear/infer", {"json": {"inputs": [X]}, "headers": HEADER_FLOOD},
     431),
    # what is not an error, but whose body or type had no declaration
    ("POST", INFER, "/v2/models/linear/infer",
     {"json": {"inputs": [X], "parameters": {"binary_data_output": True}}}, 200),
    ("GET", "/v2/models/{name}/ready", "/v2/models/linear/ready", {}, 200),
    ("GET", "/v2/health/ready", "/v2/health/ready", {}, 200),
    ("GET", "/readyz", "/readyz", {}, 200),
    ("GET", "/metrics", "/metrics", {}, 200),
]


@pytest.mark.parametrize(("method", "template", "path", "options", "status"), ANSWERS,
                         ids=[f"{a[0]} {a[2]} {a[4]}" for a in ANSWERS])
async def test_the_answer_is_declared(client: httpx.AsyncClient, doc: dict[str, Any],
                                      method: str, template: str, path: str,
                                      options: dict[str, Any], status: int) -> None:
    r = await client.request(method, path, **options)
    assert r.status_code == status, r.text
    assert_declared(doc, method, template, r)


@pytest.fixture
def not_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine says it is warming up (for the app of this module as for any other)."""
    monkeypatch.setattr(Engine, "readiness", lambda self: "the device worker is warming up")


@pytest.mark.parametrize(("template", "path"), [
    ("/readyz", "/readyz"),
    ("/v2/health/ready", "/v2/health/ready"),
    ("/v2/models/{name}/ready", "/v2/models/linear/ready"),
    ("/v2/models/{name}/versions/{version}/ready", "/v2/models/linear/versions/1/ready"),
])
async def test_not_ready_is_declared(client: httpx.AsyncClient, doc: dict[str, Any],
                                     not_ready: None, template: str, path: str) -> None:
    r = await client.get(path)
    assert r.status_code == 503, r.text
    assert_declared(doc, "GET", template, r)


async def test_a_validation_problem_lists_its_errors(client: httpx.AsyncClient,
                                                     doc: dict[str, Any]) -> None:
    """The problem's ``errors`` are in its schema: a wrong one would not validate."""
    r = await client.post("/v1/routines/linear/sensitivities", json={"inputs": [1.0], "x": 1})
    assert r.status_code == 422 and r.json()["errors"], r.text
    assert_declared(doc, "POST", SENSITIVITIES, r)
    problem = doc["components"]["schemas"]["Problem"]
    assert problem["additionalProperties"] is False
    assert problem["properties"]["errors"]["items"]["required"] == ["loc", "msg"]


async def test_over_the_limits_is_declared(make_client: ClientFactory) -> None:
    async with make_client(max_samples=2) as client:
        document = (await client.get("/openapi.json")).json()
        r = await client.post("/v1/routines/linear/evaluate", json={"inputs": [1.0, 2.0, 3.0]})
        assert r.status_code == 413, r.text
        assert_declared(document, "POST", "/v1/routines/{name}/evaluate", r)
        tensor = {**X, "shape": [3], "data": [1.0, 2.0, 3.0]}
        r = await client.post("/v2/models/linear/infer", json={"inputs": [tensor]})
        assert r.status_code == 413, r.text
        assert_declared(document, "POST", INFER, r)


async def test_a_missing_key_is_declared(make_client: ClientFactory) -> None:
    """401: problem details on v1 and /metrics, {"error"} on v2, with WWW-Authenticate."""
    async with make_client(api_keys="the-key", public_metrics=False) as client:
        document = (await client.get("/openapi.json")).json()
        for method, template, path, options in [
            ("POST", SENSITIVITIES, "/v1/routines/linear/sensitivities",
             {"json": {"inputs": [1.0]}}),
            ("POST", INFER, "/v2/models/linear/infer", {"json": {"inputs": [X]}}),
            ("GET", "/v2/models/{name}", "/v2/models/linear", {}),
            ("GET", "/metrics", "/metrics", {}),
        ]:
            r = await client.request(method, path, **options)
            assert r.status_code == 401, r.text
            assert_declared(document, method, template, r)
            declared = document["paths"][template][method.lower()]["responses"]["401"]
            assert declared["headers"]["WWW-Authenticate"]["required"] is True


async def test_fastapis_validation_body_is_not_declared(doc: dict[str, Any]) -> None:
    """FastAPI's ``{"detail": [...]}`` 422 is never sent: v1 validation errors are problems,
    v2's are 400s, and the GETs' path parameters are strings that nothing refuses."""
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    assert "ValidationError" not in doc["components"]["schemas"]
    for path in ("/v1/routines/{name}", "/v2/models/{name}", "/v2/models/{name}/ready",
                 "/v2/models/{name}/versions/{version}",
                 "/v2/models/{name}/versions/{version}/ready"):
        assert "422" not in doc["paths"][path]["get"]["responses"], path
    for path in (INFER, INFER_VERSION):
        assert "422" not in doc["paths"][path]["post"]["responses"], path


async def test_every_error_has_a_schema(doc: dict[str, Any]) -> None:
    """Every declared error of every operation names a body schema for each of its media
    types; on v1 and health the problem's, on v2 the protocol's error (or the server's
    problem, for what it writes before routing)."""
    for path, item in doc["paths"].items():
        for method, op in item.items():
            for status, declared in op["responses"].items():
                if int(status) < 400:
                    continue
                assert declared.get("content"), (method, path, status)
                for media, body in declared["content"].items():
                    if path.startswith("/v2/") and media == "application/json":
                        schema = body["schema"]
                        assert schema.get("$ref", "").endswith("/ErrorResponse") or (
                            "ready" in schema["properties"]), (method, path, status)
                    else:
                        assert media == "application/problem+json", (method, path, status)
                        assert body["schema"] == {"$ref": "#/components/schemas/Problem"}


async def test_server_level_refusals_are_declared_on_the_computation_routes(
        doc: dict[str, Any]) -> None:
    """408 and 431, written before routing (app.server, app.http.headers), on every route
    that takes a body."""
    for path, item in doc["paths"].items():
        if "post" in item:
            assert {"408", "431"} <= set(item["post"]["responses"]), path


async def test_the_expression_routes_declare_no_unknown_routine(doc: dict[str, Any]) -> None:
    """Their paths name no routine: they cannot answer 404."""
    for path, item in doc["paths"].items():
        if path.startswith("/v1/expressions/") and "post" in item:
            assert "404" not in item["post"]["responses"], path
