"""What a web page can make a visitor's browser do: content types (415), CORS, redirects."""

from __future__ import annotations

import httpx
import pytest

from tests.support import ClientFactory, assert_error, assert_problem, tensor

pytestmark = pytest.mark.anyio

SENS = "/v1/routines/linear/sensitivities"
INFER = "/v2/models/linear/infer"
BODY = b'{"inputs": [1.5, 2.5], "params": {"C": 3.0}}'
ORIGIN = "https://app.example"


@pytest.mark.parametrize("content_type", [
    None, "text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x", "application/octet-stream", "application/xml",
    "application/problem+json",
])
async def test_v1_bodies_must_be_json(client: httpx.AsyncClient, content_type: str | None
                                      ) -> None:
    headers = {"content-type": content_type} if content_type else {}
    for path in (SENS, "/v1/routines/linear/evaluate"):
        r = await client.post(path, content=BODY, headers=headers)
        body = assert_problem(r, 415, "application/json")
        assert body["type"] == "urn:dydc:problem:unsupported-media-type"


@pytest.mark.parametrize("types", [
    ["application/json", "text/plain"], ["text/plain", "application/json"],
    ["application/json", "application/json;charset=utf-8", "application/octet-stream"],
])
async def test_two_content_types_that_differ_are_refused(client: httpx.AsyncClient,
                                                         types: list[str]) -> None:
    """Which of two Content-Type headers the body is in is ambiguous: the first had been
    taken, so the same request got 200 or 415 by the headers' order. One type given twice,
    parameters aside, is no ambiguity."""
    headers = [("content-type", t) for t in types]
    r = await client.post(SENS, content=BODY, headers=headers)
    assert_problem(r, 415, f"{len(types)} Content-Type headers", "text/plain"
                   if "text/plain" in types else "application/octet-stream", "send one")
    v2 = await client.post(INFER, headers=headers, content=(
        b'{"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1.5]}]}'))
    assert_error(v2, 415, "Content-Type headers", "send one")
    same = [("content-type", "application/json"), ("content-type", "application/json")]
    assert (await client.post(SENS, content=BODY, headers=same)).status_code == 200


async def test_every_v1_route_that_reads_a_body_refuses_a_form(
        client: httpx.AsyncClient) -> None:
    """Every v1 POST route the app has, however added: a form or text/plain body is a 415
    before the route runs (/v1/expressions/scenarios, added later, had been missed)."""
    declared = (await client.get("/openapi.json")).json()["paths"]
    paths = sorted(path.replace("{name}", "linear") for path, operations in declared.items()
                   if "post" in operations and path.startswith("/v1/"))
    assert "/v1/expressions/scenarios" in paths and "/v1/routines/linear/scenarios" in paths
    for path in paths:
        for content_type in ("text/plain", "application/x-www-form-urlencoded"):
            r = await client.post(path, content=BODY, headers={"content-type": content_type})
            assert_problem(r, 415, "application/json")


@pytest.mark.parametrize("content_type", [
    "application/json", "application/json; charset=utf-8", "Application/JSON;charset=UTF-8",
])
async def test_v1_json_with_parameters_is_accepted(client: httpx.AsyncClient,
                                                   content_type: str) -> None:
    r = await client.post(SENS, content=BODY, headers={"content-type": content_type})
    assert r.status_code == 200, r.text
    assert r.json()["derivatives"]["C"] == [1.5, 2.5] and r.json()["values"] == [4.5, 7.5]


async def test_v2_refuses_the_types_a_form_can_send(client: httpx.AsyncClient) -> None:
    body = httpx.Request("POST", "/", json={"inputs": [tensor("x", [2.0])]}).read()
    for content_type in ("text/plain", "application/x-www-form-urlencoded",
                         "multipart/form-data; boundary=x"):
        assert_error(await client.post(INFER, content=body,
                                       headers={"content-type": content_type}), 415,
                     "application/json")
    for headers in ({}, {"content-type": "application/json"},
                    {"content-type": "application/octet-stream"}):
        r = await client.post(INFER, content=body, headers=headers)
        assert r.status_code == 200, (headers, r.text)


async def test_cors_is_off_by_default(client: httpx.AsyncClient) -> None:
    r = await client.post(SENS, content=BODY, headers={"content-type": "application/json",
                                                       "origin": ORIGIN})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    preflight = await client.options(SENS, headers={
        "origin": ORIGIN, "access-control-request-method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers
    assert preflight.status_code == 405


async def test_cors_when_origins_are_set(make_client: ClientFactory) -> None:
    async with make_client(cors_origins=f"{ORIGIN}, https://other.example",
                           api_keys="k") as c:
        preflight = await c.options(SENS, headers={
            "origin": ORIGIN, "access-control-request-method": "POST",
            "access-control-request-headers": "content-type, authorization"})
        assert preflight.status_code == 200, preflight.text
        assert preflight.headers["access-control-allow-origin"] == ORIGIN
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        refused = await c.options(SENS, headers={
            "origin": "https://evil.example", "access-control-request-method": "POST"})
        assert refused.status_code == 400
        assert "access-control-allow-origin" not in refused.headers
        # in the path's format, as every refusal (it was Starlette's plain text)
        problem = refused.json()
        assert refused.headers["content-type"] == "application/problem+json"
        assert problem["type"] == "urn:dydc:problem:cors-preflight-refused"
        assert problem["detail"].startswith("CORS preflight refused (origin not allowed)")
        assert problem["instance"] == f"urn:dydc:request:{refused.headers['x-request-id']}"
        v2 = await c.options("/v2/models/linear/infer", headers={
            "origin": ORIGIN, "access-control-request-method": "PUT"})
        assert v2.status_code == 400 and "method not allowed" in v2.json()["error"]
        # the browser can read the answer, a 401 included, and the request id
        r = await c.post(SENS, content=BODY, headers={"content-type": "application/json",
                                                      "origin": ORIGIN})
        assert r.status_code == 401 and r.headers["access-control-allow-origin"] == ORIGIN
        r = await c.post(SENS, content=BODY, headers={"content-type": "application/json",
                                                      "origin": ORIGIN, "x-api-key": "k"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN
        assert "x-request-id" in r.headers["access-control-expose-headers"].lower()


@pytest.mark.parametrize("path", ["/v1/routines/", "/v1/routines/linear/", "/healthz/",
                                  "/v2/models/linear/", "/docs/", SENS + "/"])
async def test_trailing_slash_is_404_without_a_redirect(client: httpx.AsyncClient,
                                                        path: str) -> None:
    for method in ("GET", "POST"):
        r = await client.request(method, path, headers={"host": "evil.example",
                                                        "content-type": "application/json"},
                                 content=BODY if method == "POST" else None)
        assert r.status_code in (404, 405), (method, path, r.status_code)
        assert "location" not in r.headers
        assert "evil.example" not in r.text


async def test_head_on_health(client: httpx.AsyncClient) -> None:
    for path in ("/healthz", "/readyz"):
        r = await client.head(path)
        assert r.status_code == 200 and r.content == b"", path


@pytest.mark.parametrize("path", ["/v1/routines", "/v1/routines/linear", "/v1/strategies",
                                  "/v1/expressions/functions", "/metrics", "/docs", "/v2",
                                  "/v2/models/linear", "/v2/health/ready", "/openapi.json"])
async def test_every_get_answers_head(client: httpx.AsyncClient, path: str) -> None:
    """RFC 9110 9.1: the GET's status and headers, without its body."""
    get = await client.get(path)
    head = await client.head(path)
    assert get.status_code == 200, (path, get.text)
    assert head.status_code == 200 and head.content == b"", path
    assert head.headers["content-type"] == get.headers["content-type"]
    if path != "/metrics":  # (its counters moved between the two)
        assert head.headers["content-length"] == get.headers["content-length"]


async def test_head_where_there_is_no_get_is_405(client: httpx.AsyncClient) -> None:
    r = await client.head("/v1/routines/linear/sensitivities")
    assert r.status_code == 405 and "POST" in r.headers["allow"]


@pytest.mark.parametrize("path", ["/v1/routines", "/healthz", "/v2/models/linear"])
async def test_a_405_on_a_get_route_allows_head_too(client: httpx.AsyncClient,
                                                    path: str) -> None:
    """Every GET answers HEAD, so the 405 of another method says so in Allow."""
    r = await client.post(path, json={})
    assert r.status_code == 405
    assert r.headers["allow"] == "GET, HEAD"
    assert "use GET or HEAD" in r.text
