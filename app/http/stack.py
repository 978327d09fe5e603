"""The order of the operator's middlewares around the whole service (:func:`wrap`).

Outermost first: the request id (every answer carries it, refusals included), the access
log (it sees the final status and the bytes on the wire), tracing, the bound on headers
(431 before anything reads them), CORS (it answers
preflights before the key check, and its headers let a browser read a 401), response
compression (zstd or gzip),
the API key, the content type, and innermost the inflating of gzip bodies, so that a request
without a valid key is refused before its body is read.

The middlewares that refuse answer in the format of the path's protocol: ``writers`` maps
each API's prefix to its error writer (app.main hands v2's), and every other path gets
problem details (app.http.refusal).
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.types import ASGIApp

from app.config import Settings
from app.errors import Writer
from app.http.access_log import AccessLogMiddleware
from app.http.auth import ApiKeyMiddleware
from app.http.compression import GzipRequestMiddleware
from app.http.content_type import ContentTypeMiddleware
from app.http.cors import CorsMiddleware
from app.http.headers import HeaderLimitMiddleware
from app.http.refusal import Refuser
from app.http.request_id import RequestIdMiddleware
from app.http.response_compression import ResponseCompressionMiddleware
from app.http.tracing import traced

__all__ = ["wrap"]

_CORS_HEADERS = ["Authorization", "Content-Type", "Content-Encoding", "X-API-Key",
                 "X-Request-ID", "Inference-Header-Content-Length"]


def wrap(app: ASGIApp, settings: Settings, writers: Mapping[str, Writer]) -> ASGIApp:
    refuse = Refuser(writers)
    stack: ASGIApp = GzipRequestMiddleware(app, settings.max_body_bytes, refuse)
    stack = ContentTypeMiddleware(stack, refuse)
    keys = settings.api_key_set
    if keys:
        stack = ApiKeyMiddleware(stack, keys, public_metrics=settings.public_metrics,
                                 public_docs=settings.public_docs, refuse=refuse)
    stack = ResponseCompressionMiddleware(stack, settings.gzip_min_bytes,
                                          settings.compress_max_bytes, settings.gzip_level,
                                          settings.zstd_level)
    if settings.cors_origin_list:
        stack = CorsMiddleware(stack, refuse, allow_origins=settings.cors_origin_list,
                               allow_methods=["GET", "HEAD", "POST"],
                               allow_headers=_CORS_HEADERS,
                               expose_headers=["X-Request-ID",
                                               "Inference-Header-Content-Length"])
    stack = HeaderLimitMiddleware(stack, settings.max_headers, settings.max_header_bytes,
                                  refuse)
    stack = traced(stack)
    if settings.access_log:
        stack = AccessLogMiddleware(stack, settings.log_format)
    return RequestIdMiddleware(stack)
