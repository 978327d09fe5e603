"""CORS: Starlette's middleware, with the refusal of a preflight in the path's format.

Starlette answers a preflight it refuses (an origin, method or header not allowed) with 400
and the plain text "Disallowed CORS origin"; every other refusal of this service is problem
details (``{"error"}`` under /v2), with the request's id as ``instance``. Only that answer is
rewritten here; what is allowed, and every header Starlette sets, stay its own.
"""

from __future__ import annotations

from typing import Any

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from app.http.refusal import Refuser

__all__ = ["CorsMiddleware"]

class CorsMiddleware(CORSMiddleware):
    def __init__(self, app: ASGIApp, refuse: Refuser, **options: Any) -> None:
        super().__init__(app, **options)
        self.refuse = refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "OPTIONS":
            await super().__call__(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if "origin" not in headers or "access-control-request-method" not in headers:
            await super().__call__(scope, receive, send)
            return
        answer = self.preflight_response(request_headers=headers)
        if answer.status_code == 400:  # refused: its reason, in the path's format
            refused = bytes(answer.body).decode("latin-1").removeprefix("Disallowed CORS ")
            answer_headers = {k: v for k, v in answer.headers.items()
                              if k.lower() not in ("content-type", "content-length")}
            answer = self.refuse.response(
                scope, 400, f"CORS preflight refused ({refused} not allowed): this service "
                "takes the origins of DYDC_CORS_ORIGINS, the methods "
                f"{', '.join(sorted(self.allow_methods))} and the request headers "
                f"{', '.join(sorted(self.allow_headers))}", "cors-preflight-refused",
                answer_headers)
        await answer(scope, receive, send)
