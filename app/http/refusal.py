"""How a middleware refuses a request, before any route has run: in the format of the
protocol the path belongs to (problem+json on v1 and the rest, ``{"error"}`` under /v2),
with the request's id as the problem's ``instance``.

Deciding the format by path is the one shortcut here: these middlewares run before routing,
and a prefix is all they know. The statuses follow :mod:`app.errors` (v2 answers 400 where
v1 answers 422)."""

from __future__ import annotations

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from app import metrics
from app.errors import Problem, problem_response, with_instance

V2_PREFIX = "/v2"

__all__ = ["refusal", "refuse", "speaks_v2"]


def speaks_v2(path: str) -> bool:
    return path == V2_PREFIX or path.startswith(V2_PREFIX + "/")


def refusal(scope: Scope, status: int, detail: str, slug: str,
            headers: dict[str, str] | None = None, reason: str | None = None) -> Response:
    """The answer; ``reason``, when given, counts it in dydc_rejections_total."""
    if reason is not None:
        metrics.child(metrics.REJECTIONS, reason).inc()
    if speaks_v2(scope["path"]):
        return Response(orjson.dumps({"error": detail}), 400 if status == 422 else status,
                        headers=headers, media_type="application/json")
    return problem_response(with_instance(Problem(status, detail, slug, dict(headers or {})),
                                          scope))


async def refuse(scope: Scope, receive: Receive, send: Send, status: int, detail: str,
                 slug: str, headers: dict[str, str] | None = None,
                 reason: str | None = None) -> None:
    """Answer the request with an error, without calling the app."""
    await refusal(scope, status, detail, slug, headers, reason)(scope, receive, send)
