"""The operator's cross-cutting concerns, each a pure ASGI middleware that holds on every
route and both protocols: request ids, the access log, CORS, response compression, API keys,
the request content type and gzip request bodies. :func:`app.http.stack.wrap` applies them in
order; this package imports nothing else, so ``app.errors`` can read the request record."""

from __future__ import annotations

__all__: list[str] = []
