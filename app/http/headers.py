"""A bound on the request's header block: at most DYDC_MAX_HEADERS fields and
DYDC_MAX_HEADER_BYTES bytes of names and values, else 431 Request Header Fields Too Large,
before any other middleware or route has looked at the request.

uvicorn has no such bound under httptools (a 1 MB header, 10,000 headers or a 60 KB Host
were answered 200), and under h11 only h11's own 16 KiB on the whole head (a plain-text 400).
This middleware bounds what reaches the application whatever the server; app.server bounds
the bytes of a head as they arrive on uvicorn's connections, so that neither parser buffers
more than the limit first. The check is one pass over the header list, summing lengths.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from app.http.refusal import Refuser

__all__ = ["TOO_LARGE", "HeaderLimitMiddleware", "too_many_headers"]

TOO_LARGE = "request-header-fields-too-large"  # the 431's problem type (app.server's too)


def too_many_headers(count: int, size: int, max_headers: int, max_bytes: int) -> str | None:
    """What is wrong with a header block of ``count`` fields and ``size`` bytes; None if
    nothing is."""
    if count > max_headers:
        return (f"the request has {count} header fields; the limit is {max_headers} "
                "(DYDC_MAX_HEADERS): send fewer")
    if size > max_bytes:
        return (f"the request's header fields are {size} bytes; the limit is {max_bytes} "
                "(DYDC_MAX_HEADER_BYTES): send shorter ones")
    return None


class HeaderLimitMiddleware:
    def __init__(self, app: ASGIApp, max_headers: int, max_bytes: int,
                 refuse: Refuser | None = None) -> None:
        self.app = app
        self.refuse = refuse or Refuser()
        self.max_headers = max_headers
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = scope["headers"]
            size = 0
            for name, value in headers:
                size += len(name) + len(value)
            if len(headers) > self.max_headers or size > self.max_bytes:
                detail = too_many_headers(len(headers), size, self.max_headers, self.max_bytes)
                assert detail is not None
                await self.refuse(scope, receive, send, 431, detail,
                                  TOO_LARGE, reason="headers")
                return
        await self.app(scope, receive, send)
