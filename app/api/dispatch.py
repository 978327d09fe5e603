"""The application: the chain of cross-cutting concerns, then the computation routes
straight into the one request pipeline, and everything else to FastAPI.

Other services call the computation routes thousands of times a second, and the event
loop's thread is what limits them: FastAPI's own middleware layers, route search, and the
Request and Response objects it builds around a route cost about as much as the route's own
work. So :class:`App` matches those routes itself and serves them through
:func:`app.api.pipeline.serve`; the FastAPI routes registered for them (which document them
in OpenAPI) run the same pipeline, so the answers are the same either way. Every concern
that must hold on every route (authentication, request ids, compression) is a pure ASGI
middleware around both (app.http, applied by app.main's Service).
"""

from __future__ import annotations

import asyncio
import re

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from app.api.expression_scenarios import EXPRESSION_SCENARIOS
from app.api.expressions import EXPRESSION_COMPARE, EXPRESSION_EVALUATE, EXPRESSION_SENSITIVITIES
from app.api.pipeline import Codec, Incoming, serve, shutdown_reply
from app.api.scenarios import SCENARIOS
from app.api.v1 import COMPARE, EVALUATE, SENSITIVITIES
from app.api.v2.expression import EXPRESSION_INFER
from app.api.v2.routes import INFER

__all__ = ["App", "route_of"]

# (method POST) path -> codec; the named groups are the path parameters
_ROUTES: list[tuple[re.Pattern[str], Codec]] = [
    (re.compile(r"/v1/routines/(?P<name>[^/]+)/sensitivities"), SENSITIVITIES),
    (re.compile(r"/v1/routines/(?P<name>[^/]+)/evaluate"), EVALUATE),
    (re.compile(r"/v1/routines/(?P<name>[^/]+)/compare"), COMPARE),
    (re.compile(r"/v1/routines/(?P<name>[^/]+)/scenarios"), SCENARIOS),
    # the expression model before the models' pattern, which would take its name
    (re.compile(r"/v2/models/expression/infer"), EXPRESSION_INFER),
    (re.compile(r"/v2/models/(?P<name>[^/]+)/infer"), INFER),
    (re.compile(r"/v2/models/(?P<name>[^/]+)/versions/(?P<version>[^/]+)/infer"), INFER),
    # callers' expressions (app.api.expressions), after the routines' routes
    (re.compile(r"/v1/expressions/sensitivities"), EXPRESSION_SENSITIVITIES),
    (re.compile(r"/v1/expressions/evaluate"), EXPRESSION_EVALUATE),
    (re.compile(r"/v1/expressions/compare"), EXPRESSION_COMPARE),
    (re.compile(r"/v1/expressions/scenarios"), EXPRESSION_SCENARIOS),
]

def route_of(scope: Scope) -> tuple[Codec, dict[str, str]] | None:
    """The codec and path parameters of a computation request, else None."""
    if scope["type"] != "http" or scope["method"] != "POST":
        return None
    path = scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    for pattern, codec in _ROUTES:
        match = pattern.fullmatch(path)
        if match is not None:
            return codec, match.groupdict()
    return None


class App(FastAPI):
    """FastAPI, with the computation routes dispatched to the pipeline. (The middleware
    chain around all of it is app.main's Service.)"""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not hasattr(self.state, "engine"):
            await super().__call__(scope, receive, send)  # lifespan, or not started yet
            return
        await self._dispatch(scope, receive, send)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = route_of(scope)
        if route is None:
            await super().__call__(scope, receive, send)
            return
        codec, path_params = route
        state = self.state
        incoming = Incoming(scope, receive, path_params, state.settings, state.bodies)
        try:
            try:
                reply = await serve(codec, incoming, state.engine)
            except asyncio.CancelledError:  # the server's graceful shutdown timed out
                await asyncio.shield(shutdown_reply(codec).send(send))
                raise
            if reply is not None:
                await reply.send(send)  # (compressed on the way, for a large answer)
        finally:
            incoming.finish()
