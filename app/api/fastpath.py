"""The two computation routes straight from ASGI, past Starlette's middleware and router.

Other services call ``POST /v1/routines/{name}/sensitivities`` thousands of times a second,
and the event loop's thread is what limits them: under load, the eight middleware layers,
the route search, and the Request and Response objects FastAPI builds around a route cost
about as much as the route's own work. :class:`App` answers these two paths itself, with the
same code as the FastAPI routes (``app.api.v1.compute``) and the same error responses
(``app.errors.error_response``); every other request, and these paths with any other method
or under a root path, goes to FastAPI as before. The FastAPI routes stay registered, so the
OpenAPI document is unchanged and they still serve when the bare path does not apply.
"""

from __future__ import annotations

import re
from functools import partial

from fastapi import FastAPI
from starlette.datastructures import Headers, QueryParams
from starlette.requests import ClientDisconnect, Request
from starlette.types import Message, Receive, Scope, Send

from app.api.decoding import check_declared_length, receive_body
from app.api.v1 import compute
from app.engine import JobKind
from app.errors import error_response

__all__ = ["App", "route_of"]

_ROUTE = re.compile(r"/v1/routines/([^/]+)/(sensitivities|evaluate)")
_KINDS = {"sensitivities": JobKind.SENSITIVITIES, "evaluate": JobKind.EVALUATE}
_NO_QUERY = QueryParams()


def route_of(scope: Scope) -> tuple[JobKind, str] | None:
    """(kind, routine name) when this request is one the bare path serves."""
    if scope["type"] != "http" or scope["method"] != "POST" or scope.get("root_path"):
        return None
    match = _ROUTE.fullmatch(scope["path"])
    if match is None:
        return None
    return _KINDS[match[2]], match[1]


async def _read(scope: Scope, receive: Receive, limit: int) -> bytes:
    check_declared_length(Headers(scope=scope).get("content-length"), limit)
    return await receive_body(receive, limit)


def _ok(body: bytes) -> Message:
    return {"type": "http.response.start", "status": 200,
            "headers": [(b"content-type", b"application/json"),
                        (b"content-length", b"%d" % len(body))]}


class App(FastAPI):
    """FastAPI, with the computation routes answered before its middleware stack."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = route_of(scope)
        if route is None or not hasattr(self.state, "engine"):  # before the lifespan: FastAPI
            await super().__call__(scope, receive, send)
            return
        kind, name = route
        query = QueryParams(scope["query_string"]) if scope["query_string"] else _NO_QUERY
        try:
            body = await compute(kind, name, self.state.engine, self.state.settings, query,
                                 partial(_read, scope, receive))
        except ClientDisconnect:  # nobody to answer; counted 499 in the request metrics
            return
        except Exception as exc:
            response = error_response(Request(scope, receive), exc)
            await response(scope, receive, send)
            return
        await send(_ok(body))
        await send({"type": "http.response.body", "body": body})
