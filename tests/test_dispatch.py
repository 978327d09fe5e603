"""The application's dispatcher (app.api.dispatch) answers the computation routes exactly as
the FastAPI routes do, good requests and bad, through the same pipeline, and is the path
actually taken."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import orjson
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from prometheus_client import generate_latest
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from app.api import computation
from app.api.computation import COMPUTATION_ROUTES
from app.api.dispatch import App, route_of
from app.api.expressions import EXPRESSION_COMPARE
from app.api.pipeline import Codec
from app.api.v1 import EVALUATE, SENSITIVITIES
from app.api.v2.expression import EXPRESSION_INFER
from app.api.v2.routes import INFER
from app.config import Settings
from app.main import create_app
from tests.support import scrape

pytestmark = pytest.mark.anyio


@dataclass
class Clients:
    app: App
    fast: httpx.AsyncClient  # through App.__call__: the dispatcher
    framework: httpx.AsyncClient  # straight into FastAPI.__call__: routes and middleware


@pytest.fixture(scope="module")
async def clients() -> AsyncIterator[Clients]:
    app = create_app(Settings(device="cpu", max_body_bytes=4096))
    assert isinstance(app, App)

    async def framework(scope: Scope, receive: Receive, send: Send) -> None:
        await FastAPI.__call__(app, scope, receive, send)

    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60):
        base = "http://dydc.test"
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base,
                                     timeout=60) as fast, \
                httpx.AsyncClient(transport=httpx.ASGITransport(app=framework),
                                  base_url=base, timeout=60) as slow:
            with anyio.fail_after(60):
                while (await fast.get("/readyz")).status_code != 200:
                    await anyio.sleep(0.02)
            yield Clients(app, fast, slow)


def _comparable(resp: httpx.Response) -> tuple[int, str, Any, str | None]:
    body = resp.json()
    if isinstance(body, dict):
        body.pop("timing_ms", None)
        body.pop("instance", None)  # the request's own id
    return resp.status_code, resp.headers["content-type"], body, resp.headers.get("retry-after")


SENS = "/v1/routines/linear/sensitivities"
_JSON = {"content-type": "application/json"}
CASES: list[tuple[str, dict[str, Any]]] = [
    (SENS, {"json": {"inputs": list(range(10)), "params": {"C": -5.0}, "wrt": ["C"]}}),
    (SENS + "?strategy=jacfwd&timeout_ms=5000", {"json": {"inputs": [1.5, 2.5]}}),
    ("/v1/routines/black_scholes_call/sensitivities",
     {"json": {"inputs": [[100, 95, 0.5], [90, 100, 2]], "params": {"sigma": 0.3},
               "wrt": ["sigma"], "dtype": "float32"}}),
    ("/v1/routines/softmax/evaluate", {"json": {"inputs": [[1, 2, 3]], "params": {"T": 2}}}),
    ("/v1/routines/nope/sensitivities", {"json": {"inputs": [1]}}),
    ("/v1/routines/nope/evaluate", {"json": {"inputs": [1]}}),
    (SENS + "?strategy=backwards", {"json": {"inputs": [1]}}),
    (SENS + "?timeout_ms=soon", {"json": {"inputs": [1]}}),
    (SENS + "?timeout_ms=-1", {"json": {"inputs": [1]}}),
    (SENS, {"content": b"{not json", "headers": _JSON}),
    (SENS, {"content": b"", "headers": _JSON}),
    (SENS, {"content": b"[1, 2]", "headers": _JSON}),
    (SENS, {"json": {"inputs": [1], "extra": 1}}),
    (SENS, {"json": {"inputs": [[1], [2, 3]]}}),
    (SENS, {"json": {"inputs": [1, "2"]}}),
    (SENS, {"json": {"inputs": []}}),
    (SENS, {"content": b'{"inputs": [1, NaN]}', "headers": _JSON}),
    (SENS, {"json": {"inputs": [1], "params": {"D": 1}}}),
    (SENS, {"json": {"inputs": [1], "wrt": []}}),
    (SENS, {"json": {"inputs": [1], "dtype": "float16"}}),
    ("/v1/routines/black_scholes_call/evaluate", {"json": {"inputs": [1, 2, 3]}}),
    ("/v1/routines/black_scholes_call/sensitivities", {"json": {"inputs": [[1, 2, 3]],
                                                               "params": {"sigma": -1}}}),
    (SENS, {"json": {"inputs": list(range(2000))}}),  # over max_body_bytes: 413
    (SENS + "?strategy=reverse-loop", {"json": {"inputs": list(range(600))}}),  # over its cap
]


@pytest.mark.parametrize(("path", "request_kwargs"), CASES,
                         ids=[f"{i}-{c[0].rsplit('/', 1)[-1]}" for i, c in enumerate(CASES)])
async def test_dispatcher_answers_as_the_fastapi_route_does(
        clients: Clients, path: str, request_kwargs: dict[str, Any]) -> None:
    fast = await clients.fast.post(path, **request_kwargs)
    slow = await clients.framework.post(path, **request_kwargs)
    assert _comparable(fast) == _comparable(slow)
    assert fast.status_code < 500


async def test_forum_example_through_the_dispatcher(clients: Clients) -> None:
    resp = await clients.fast.post(SENS, json={"inputs": list(range(10)),
                                               "params": {"C": -5.0}, "wrt": ["C"]})
    assert resp.status_code == 200
    assert resp.headers["content-length"] == str(len(resp.content))
    body = resp.json()
    assert body["values"] == [-5.0 * i for i in range(10)]
    assert body["derivatives"] == {"C": [float(i) for i in range(10)]}


async def test_computation_requests_skip_the_framework(
        clients: Clients, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    real = FastAPI.__call__

    async def spy(self: FastAPI, scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["path"])
        await real(self, scope, receive, send)

    monkeypatch.setattr(FastAPI, "__call__", spy)
    assert (await clients.fast.post(SENS, json={"inputs": [1]})).status_code == 200
    assert (await clients.fast.post("/v1/routines/linear/evaluate",
                                    json={"inputs": [1]})).status_code == 200
    assert (await clients.fast.post("/v1/routines/nope/evaluate",
                                    json={"inputs": [1]})).status_code == 404
    assert seen == []
    assert (await clients.fast.get("/v1/routines/linear")).status_code == 200
    assert (await clients.fast.get(SENS)).status_code == 405  # other methods: FastAPI's
    assert seen == ["/v1/routines/linear", SENS]


def _scope(method: str = "POST", path: str = SENS, root_path: str = "") -> Scope:
    return {"type": "http", "method": method, "path": path, "root_path": root_path,
            "query_string": b"", "headers": []}


async def test_route_of(clients: Clients) -> None:
    routes = clients.app.computation_routes
    assert route_of(_scope(), routes) == (SENSITIVITIES, {"name": "linear"})
    assert route_of(_scope(path="/v1/routines/a b/evaluate"), routes) == (
        EVALUATE, {"name": "a b"})
    assert route_of(_scope(path="/v2/models/linear/infer"), routes) == (
        INFER, {"name": "linear"})
    assert route_of(_scope(path="/v2/models/linear/versions/1/infer"), routes) == (
        INFER, {"name": "linear", "version": "1"})
    # the expression model's own route, before the models' pattern that would take its name
    assert route_of(_scope(path="/v2/models/expression/infer"), routes) == (
        EXPRESSION_INFER, {})
    assert route_of(_scope(path="/v1/expressions/compare"), routes) == (EXPRESSION_COMPARE, {})
    assert route_of(_scope(path="/dydc" + SENS, root_path="/dydc"), routes) == (
        SENSITIVITIES, {"name": "linear"})
    assert route_of(_scope(method="GET"), routes) is None
    assert route_of(_scope(path=SENS + "/"), routes) is None
    assert route_of(_scope(path="/v1/routines/a/b/evaluate"), routes) is None
    assert route_of(_scope(path="/v1/routines/linear"), routes) is None
    assert route_of({"type": "websocket", "path": SENS}, routes) is None


async def test_fastapi_routes_each_declared_path_as_the_dispatcher_does(
        clients: Clients, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each declared route is in the dispatcher's table, and a path of each (its parameters
    named "expression", the expression model's name, and "linear") goes to the codec and
    parameters that FastAPI's own route search, with app.main's order of routers, sends it
    to."""
    served: list[tuple[Codec, dict[str, str]]] = []

    async def spy(codec: Codec, request: object, **path_params: str) -> Response:
        served.append((codec, path_params))
        return Response(status_code=204)

    monkeypatch.setattr(computation, "respond", spy)
    assert len(COMPUTATION_ROUTES) == 12
    table = clients.app.computation_routes
    assert len(table.exact) + len(table.patterns) == len(COMPUTATION_ROUTES)
    for declared in COMPUTATION_ROUTES:
        for name in ("expression", "linear"):
            path = re.sub(r"{(\w+)}", name, declared.path)
            assert (await clients.framework.post(path, json={})).status_code == 204
            assert route_of(_scope(path=path), table) == served[-1]
    assert {codec for codec, _ in served} == {r.codec for r in COMPUTATION_ROUTES}


async def _call(app: App, chunks: list[bytes], *, headers: list[tuple[bytes, bytes]],
                disconnect: bool = False) -> list[Message]:
    """One request straight through the ASGI interface: the body in ``chunks``, then, if
    ``disconnect``, the client going away instead of the last chunk."""
    incoming: list[Message] = [{"type": "http.request", "body": c, "more_body": True}
                               for c in chunks[:-1]]
    incoming.append({"type": "http.disconnect"} if disconnect
                    else {"type": "http.request", "body": chunks[-1], "more_body": False})
    sent: list[Message] = []

    async def receive() -> Message:
        return incoming.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    headers = [(b"content-type", b"application/json"), *headers]
    await app({**_scope(), "headers": headers, "query_string": b"", "http_version": "1.1",
               "scheme": "http", "server": ("dydc.test", 80), "client": ("127.0.0.1", 1)},
              receive, send)
    return sent


async def test_streamed_body_in_chunks(clients: Clients) -> None:
    body = orjson.dumps({"inputs": [1, 2, 3], "params": {"C": 2}})
    sent = await _call(clients.app, [body[:5], body[5:17], body[17:]], headers=[])
    assert sent[0]["status"] == 200
    assert orjson.loads(sent[1]["body"])["derivatives"] == {"C": [1.0, 2.0, 3.0]}


async def test_streamed_body_over_the_limit_is_413_before_the_end(clients: Clients) -> None:
    chunk = b" " * 3000  # two of these are over max_body_bytes = 4096, with no Content-Length
    sent = await _call(clients.app, [chunk, chunk, b"never read"], headers=[])
    assert sent[0]["status"] == 413
    assert (b"content-type", b"application/problem+json") in sent[0]["headers"]
    assert b"DYDC_MAX_BODY_BYTES" in sent[1]["body"]


async def test_declared_length_over_the_limit_is_413_unread(clients: Clients) -> None:
    sent = await _call(clients.app, [b"{}"], headers=[(b"content-length", b"5000")])
    assert sent[0]["status"] == 413, sent
    assert b"5000 bytes; the limit is 4096" in sent[1]["body"]


async def test_client_gone_mid_body_gets_no_answer_and_counts_499(clients: Clients) -> None:
    def gone() -> float:
        samples = scrape(generate_latest().decode())
        return sum(v for labels, v in samples.get("dydc_requests_total", [])
                   if labels.get("status") == "499")

    before = gone()
    sent = await _call(clients.app, [b'{"inputs": [1, ', b""], headers=[], disconnect=True)
    assert sent == []
    assert gone() == before + 1


async def test_under_a_root_path(clients: Clients) -> None:
    async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=clients.app, root_path="/dydc"),
            base_url="http://dydc.test", timeout=60) as c:
        resp = await c.post("/dydc" + SENS, json={"inputs": [3], "params": {"C": 2}})
    assert resp.status_code == 200
    assert resp.json()["derivatives"] == {"C": [3.0]}
