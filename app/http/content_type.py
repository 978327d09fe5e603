"""Request bodies a browser cannot send cross-site without asking first.

A web page may POST ``text/plain``, ``application/x-www-form-urlencoded`` or
``multipart/form-data`` anywhere without a CORS preflight, so without this check a page
could make its visitors' browsers submit work (v1 parsed any body as JSON). v1 POST bodies
must therefore be ``application/json`` (parameters such as ``charset=utf-8`` allowed; other
``+json`` types are refused, as nothing sends them); anything else, no Content-Type
included, is a 415. v2 keeps its own types (JSON, and Triton's binary tensors, which
tritonclient sends as ``application/octet-stream`` or with no type at all), so only the three
preflight-free types are refused there."""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Receive, Scope, Send

from app.http.refusal import Refuser

__all__ = ["ContentTypeMiddleware", "media_types"]

V2_PREFIX = "/v2"

JSON = "application/json"
# The types a browser sends cross-site without a preflight (the Fetch standard's
# CORS-safelisted Content-Type values).
PREFLIGHT_FREE = frozenset(
    {"text/plain", "application/x-www-form-urlencoded", "multipart/form-data"}
)
# The v1 routes that read a body (other POSTs fall through to the router: 404 or 405).
_V1_BODIES = re.compile(r"/v1/routines/[^/]+/(sensitivities|evaluate|compare|scenarios)"
                        r"|/v1/expressions/(sensitivities|evaluate|compare|scenarios)")


def media_types(scope: Scope) -> list[str]:
    """Each Content-Type header's media type, lower case, without parameters, in order."""
    return [str(value.decode("latin-1")).partition(";")[0].strip().lower()
            for name, value in scope["headers"] if name == b"content-type"]


def _speaks_v2(path: str) -> bool:
    return path == V2_PREFIX or path.startswith(V2_PREFIX + "/")


class ContentTypeMiddleware:
    def __init__(self, app: ASGIApp, refuse: Refuser | None = None) -> None:
        self.app = app
        self.refuse = refuse or Refuser()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        types = media_types(scope)
        given = types[0] if types else None
        if len(set(types)) > 1:
            # a singleton field (RFC 9110 8.3) given twice: which one the body is in is
            # ambiguous (the first had been taken, so the header's order made it 200 or 415)
            detail = (f"the request has {len(types)} Content-Type headers "
                      f"({', '.join(types[:3])}{', ...' if len(types) > 3 else ''}); send one")
        elif given != JSON and _V1_BODIES.fullmatch(path):
            what = f"Content-Type {given}" if given else "no Content-Type"
            detail = f"the body was sent with {what}; send it as {JSON}"
        elif _speaks_v2(path) and given in PREFLIGHT_FREE:
            detail = (f"the body was sent with Content-Type {given}; send {JSON}, or "
                      "application/octet-stream with binary tensor data")
        else:
            await self.app(scope, receive, send)
            return
        await self.refuse(scope, receive, send, 415, detail, "unsupported-media-type")
