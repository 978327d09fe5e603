"""The application: the chain of cross-cutting concerns, then the computation routes
straight into the one request pipeline, and everything else to FastAPI.

Other services call the computation routes thousands of times a second, and the event
loop's thread is what limits them: FastAPI's own middleware layers, route search, and the
Request and Response objects it builds around a route cost about as much as the route's own
work. So :class:`App` matches those routes itself and serves them through
:func:`app.api.pipeline.serve`; the FastAPI routes registered for them (which document them
in OpenAPI) run the same pipeline, so the answers are the same either way; both are made
from one declaration per route (app.api.computation).
Every concern that must hold on every route (authentication, request ids, compression) is a
pure ASGI middleware around both (app.http, applied by app.main's Service).
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from app.api.computation import COMPUTATION_ROUTES, ComputationRoute
from app.api.pipeline import Codec, Incoming, serve, shutdown_reply

__all__ = ["App", "Routes", "computation_routes", "route_of"]

@dataclass(frozen=True)
class Routes:
    """The table :func:`route_of` looks paths up in."""

    exact: dict[str, Codec]  # the routes without parameters, by path
    # the others, as (pattern, codec): the pattern's named groups are the path parameters
    patterns: tuple[tuple[re.Pattern[str], Codec], ...]


def computation_routes(declared: Sequence[ComputationRoute]) -> Routes:
    """The dispatcher's table of ``declared``. A path without parameters comes before any
    pattern that also matches it (/v2/models/expression/infer before
    /v2/models/{name}/infer), and a pattern before those with more parameters, as app.main
    includes the routes for FastAPI; otherwise they keep their order of declaration."""
    exact = {r.path: r.codec for r in declared if not r.pattern.groups}
    patterns = sorted((r for r in declared if r.pattern.groups), key=lambda r: r.pattern.groups)
    return Routes(exact, tuple((r.pattern, r.codec) for r in patterns))


def route_of(scope: Scope, routes: Routes) -> tuple[Codec, dict[str, str]] | None:
    """The codec and path parameters of a computation request, else None."""
    if scope["type"] != "http" or scope["method"] != "POST":
        return None
    path = scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    codec = routes.exact.get(path)
    if codec is not None:
        return codec, {}
    for pattern, codec in routes.patterns:
        match = pattern.fullmatch(path)
        if match is not None:
            return codec, match.groupdict()
    return None


class App(FastAPI):
    """FastAPI, with the computation routes dispatched to the pipeline. (The middleware
    chain around all of it is app.main's Service.)"""

    @functools.cached_property
    def computation_routes(self) -> Routes:
        """The dispatcher's table, of the routes declared by the first request."""
        return computation_routes(COMPUTATION_ROUTES)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not hasattr(self.state, "engine"):
            await super().__call__(scope, receive, send)  # lifespan, or not started yet
            return
        await self._dispatch(scope, receive, send)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = route_of(scope, self.computation_routes)
        if route is None:
            if scope["method"] == "HEAD":
                # every GET answers HEAD (RFC 9110 9.1), which FastAPI's routes do not: the
                # GET's answer, headers and all (a compressed one's length included); the
                # server sends no body for a HEAD (uvicorn, h11 and httptools alike)
                scope = {**scope, "method": "GET"}
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
