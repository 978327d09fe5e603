"""gzip and deflate request bodies (responses: app.http.response_compression).

A body sent with ``Content-Encoding: gzip`` (or ``deflate``, the zlib format, as Triton's
client sends with ``request_compression_algorithm="deflate"``) is inflated here, as it arrives, and
the route sees the plain body with its true Content-Length. DYDC_MAX_BODY_BYTES applies to
the compressed bytes and to the inflated ones, checked while inflating (zlib's
``max_length``), so a compression bomb costs at most the limit and gets 413. Starlette has
no request-side decompression, hence this module; large chunks inflate in a thread, off the
event loop.
"""

from __future__ import annotations

import zlib

import anyio.to_thread
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.context import record_of
from app.errors import CLIENT_CLOSED_REQUEST
from app.http.refusal import Refuser

__all__ = ["GzipRequestMiddleware"]

_GZIP = (b"gzip", b"x-gzip")
_DEFLATE = b"deflate"
# Inflate chunks larger than this in a thread. zlib inflates up to about 1,000 times what it
# reads, so the size that matters is the inflated one: at 256 KiB of compressed bytes, a 60 KB
# chunk of 60 MiB inflated held the event loop (/healthz 117-290 ms); a 4 KiB chunk inflates
# to about 4 MiB at most, a few milliseconds.
_OFF_LOOP_BYTES = 4 * 1024


class _TooLarge(Exception):
    pass


class _Malformed(Exception):
    pass


class _Trailing(Exception):
    pass


_MAGIC = b"\x1f\x8b"  # how every gzip member begins


class _Inflater:
    """Inflates a gzip stream, never holding more than ``limit`` + 1 inflated bytes.

    A stream of several gzip members (``cat a.gz b.gz``) is inflated whole, as RFC 1952 says
    and as ``gzip -d`` does; bytes after a member that do not begin another are refused
    (:class:`_Trailing`), never ignored."""

    def __init__(self, limit: int, gzip: bool = True) -> None:
        self.limit = limit
        self.size = 0
        self.parts: list[bytes] = []
        self.gzip = gzip  # else one zlib stream (deflate)
        self.wbits = 16 + zlib.MAX_WBITS if gzip else zlib.MAX_WBITS
        self.z = zlib.decompressobj(self.wbits)
        self.rest = b""  # the start of a next member's magic, cut by a chunk's end

    def feed(self, data: bytes) -> None:
        data, self.rest = self.rest + data, b""
        while data:
            if self.z.eof:  # a member ended: what follows must be another
                if self.gzip and len(data) < len(_MAGIC) and _MAGIC.startswith(data):
                    self.rest = data
                    return
                if not (self.gzip and data.startswith(_MAGIC)):
                    raise _Trailing(len(data))
                self.z = zlib.decompressobj(self.wbits)
            try:
                out = self.z.decompress(data, self.limit + 1 - self.size)
            except zlib.error as exc:
                raise _Malformed(str(exc)) from None
            self.size += len(out)
            if self.size > self.limit:
                raise _TooLarge
            self.parts.append(out)
            data = self.z.unused_data if self.z.eof else self.z.unconsumed_tail

    def finish(self) -> bytes:
        if self.rest:
            raise _Trailing(len(self.rest))
        if not self.z.eof:
            raise _Malformed(f"the {'gzip' if self.gzip else 'deflate'} stream ends early")
        return b"".join(self.parts)


async def _read_inflated(receive: Receive, limit: int, gzip: bool = True) -> bytes | None:
    """The inflated body, or None if the client went away."""
    inflater = _Inflater(limit, gzip)
    received = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        received += len(chunk)
        if received > limit:
            raise _TooLarge
        if len(chunk) > _OFF_LOOP_BYTES:
            await anyio.to_thread.run_sync(inflater.feed, chunk)
        else:
            inflater.feed(chunk)
        if not message.get("more_body", False):
            # no body at all is no body, whatever its headers say (a GET with the header)
            return inflater.finish() if received else b""


def _bodiless(scope: Scope) -> bool:
    """A request framed without a body: no Transfer-Encoding, and Content-Length absent or 0."""
    length = None
    for name, value in scope["headers"]:
        if name == b"transfer-encoding":
            return False
        if name == b"content-length":
            length = value
    return length is None or length.strip() == b"0"


class GzipRequestMiddleware:
    def __init__(self, app: ASGIApp, limit: int, refuse: Refuser | None = None) -> None:
        self.app = app
        self.limit = limit
        self.refuse = refuse or Refuser()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # header lines of one name are one comma-separated list (RFC 9110 5.3), whose empty
        # elements do not count (5.6.1: "gzip," is gzip, and an empty header no coding)
        codings = [c.strip() for k, v in scope["headers"] if k == b"content-encoding"
                   for c in v.split(b",") if c.strip()]
        encoding = b", ".join(codings).lower() if codings else None
        if encoding is None or encoding == b"identity":
            await self.app(scope, receive, send)
            return
        known = encoding in _GZIP or encoding == _DEFLATE
        if not known and _bodiless(scope):
            # an encoding of no body says nothing (a GET with the header): ignored, as a gzip
            # one is where it turns out empty
            await self.app(scope, receive, send)
            return
        if not known:
            await self.refuse(scope, receive, send, 415,
                              f"Content-Encoding {encoding.decode('latin-1')} is not supported; "
                              "send the body as is, or with Content-Encoding: gzip (or deflate)",
                              "unsupported-media-type")
            return
        coding = "gzip" if encoding in _GZIP else "deflate"
        try:
            body = await _read_inflated(receive, self.limit, gzip=coding == "gzip")
        except _TooLarge:
            await self.refuse(scope, receive, send, 413,
                              f"the request body is over the limit of {self.limit} bytes "
                              "(DYDC_MAX_BODY_BYTES), compressed or inflated: split the batch",
                              "body-too-large", reason="body_size")
            return
        except _Malformed as exc:
            await self.refuse(scope, receive, send, 422,
                              f"the body is not valid {coding} ({exc}); send it compressed with "
                              f"{coding}, or without Content-Encoding", "malformed-body")
            return
        except _Trailing as exc:
            after = "another gzip member" if coding == "gzip" else "part of its zlib stream"
            await self.refuse(scope, receive, send, 400,
                              f"the body has {exc} bytes after its {coding} data that are not "
                              f"{after}; send only the compressed body", f"{coding}-trailing-data")
            return
        if body is None:  # the client went away (or the server cut a malformed request)
            record = record_of(scope)
            if record is not None and record.closed_with is None:
                record.closed_with = CLIENT_CLOSED_REQUEST  # for the access log: not a 500
            return
        headers = [(k, v) for k, v in scope["headers"]
                   if k not in (b"content-encoding", b"content-length")]
        headers.append((b"content-length", b"%d" % len(body)))
        delivered = False

        async def receive_inflated() -> Message:
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app({**scope, "headers": headers}, receive_inflated, send)
