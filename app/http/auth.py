"""API keys: with keys configured, every route but health (and, by default, /metrics and the
docs) needs ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; anything else is a 401
with ``WWW-Authenticate: Bearer``.

Forms accepted: the scheme in any case (``bearer``, ``BEARER``: RFC 6750 and RFC 9110 make
auth schemes case-insensitive), one or more spaces between scheme and key (RFC 9110's
``1*SP``), spaces around the value (stripped, as for any field value). A key with a space
inside, another scheme, or an empty value is a wrong credential. Every credential a request
carries must be right: a wrong Bearer token beside a right ``X-API-Key`` (or two X-API-Key
headers, one wrong) is refused, so that a client with a stale key learns of it.

Why by hand: Starlette's AuthenticationMiddleware answers failures with plain text and
FastAPI's security dependencies only guard the routes that declare them (not the bare
computation path, not the docs' assets); a key check is a dozen lines. Keys are compared as
SHA-256 digests with :func:`hmac.compare_digest`, against every configured key without
stopping at the first match, so the time taken says nothing about any key. Nothing here logs
a header or counts by key.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from app.access import is_open
from app.http.refusal import Refuser

__all__ = ["ApiKeyMiddleware", "presented_keys"]

_CHALLENGE = {"WWW-Authenticate": "Bearer"}
_HOW = "send Authorization: Bearer <key> or X-API-Key: <key>"


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


def presented_keys(headers: Iterable[tuple[bytes, bytes]]) -> list[bytes]:
    """Every credential a request carries, in order: each X-API-Key, and each Authorization
    header's Bearer token (b"" for an Authorization that is not ``Bearer <key>``, which
    matches no key)."""
    keys = []
    for name, value in headers:
        if name == b"x-api-key":
            keys.append(value.strip())
        elif name == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            token = token.lstrip(b" ")
            keys.append(token if scheme.lower() == b"bearer" and b" " not in token else b"")
    return keys


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, keys: Iterable[str], *, public_metrics: bool = True,
                 public_docs: bool = True, refuse: Refuser | None = None) -> None:
        self.app = app
        self.refuse = refuse or Refuser()
        self.digests = [_digest(k.encode()) for k in keys]
        if not self.digests:
            raise ValueError("ApiKeyMiddleware needs at least one key")
        self.public_metrics = public_metrics
        self.public_docs = public_docs

    def accepts(self, key: bytes) -> bool:
        candidate = _digest(key)
        match = False
        for digest in self.digests:
            match |= hmac.compare_digest(candidate, digest)
        return match

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open(scope["path"], public_metrics=self.public_metrics,
                                              public_docs=self.public_docs):
            await self.app(scope, receive, send)
            return
        keys = presented_keys(scope["headers"])
        if keys and all(self.accepts(key) for key in keys):
            await self.app(scope, receive, send)
            return
        detail = (f"this service needs an API key: {_HOW}" if not keys
                  else f"an API key is not accepted (every key a request carries must be "
                       f"valid); {_HOW} with a valid key, once")
        await self.refuse(scope, receive, send, 401, detail, "unauthorized", _CHALLENGE)
