"""How a middleware refuses a request, before any route has run: in the format of the
protocol the path belongs to, with the request's id as the problem's ``instance``.

The formats are not written here. app.main hands :func:`app.http.stack.wrap` each API's error
writer by the prefix it mounts (v2's ``{"error"}``, 400 where v1 answers 422, under /v2: the
writer its routes and app.errors' handlers use too); every other path is answered in problem
details (:func:`app.errors.problem_response`). Deciding the format by prefix is the one
shortcut here: these middlewares run before routing, and a prefix is all they know."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from app import metrics
from app.errors import ProblemDetails, Writer, with_instance, writer_for

__all__ = ["Refuser"]


class Refuser:
    """Answers a refused request with the writer of its path's prefix (``writers``)."""

    def __init__(self, writers: Mapping[str, Writer] | None = None) -> None:
        self.writers = dict(writers or {})

    def response(self, scope: Scope, status: int, detail: str, slug: str,
                 headers: dict[str, str] | None = None, reason: str | None = None) -> Response:
        """The answer; ``reason``, when given, counts it in dydc_rejections_total. A refused
        POST (every computation route is one) is counted in dydc_requests_total as well, as
        the pipeline counts what it answers: its routine and strategy unknown."""
        if reason is not None:
            metrics.child(metrics.REJECTIONS, reason).inc()
        if scope.get("method") == "POST":
            metrics.child(metrics.REQUESTS, "unknown", "none", str(status)).inc()
        problem = with_instance(ProblemDetails(status, detail, slug, dict(headers or {})), scope)
        return writer_for(scope["path"], self.writers)(problem)

    async def __call__(self, scope: Scope, receive: Receive, send: Send, status: int,
                       detail: str, slug: str, headers: dict[str, str] | None = None,
                       reason: str | None = None) -> None:
        """Answer the request with an error, without calling the app."""
        await self.response(scope, status, detail, slug, headers, reason)(scope, receive, send)
