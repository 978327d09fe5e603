"""Compressed answers, only where compressing pays: zstd or gzip, by the client's
``Accept-Encoding``, for JSON answers between ``DYDC_GZIP_MIN_BYTES`` and
``DYDC_COMPRESS_MAX_BYTES``.

Why not Starlette's GZipMiddleware (this service used it until it was measured):
- it knows gzip only. zlib at its fastest level compresses a 1e6-sample JSON answer (38 MB)
  in about 350 ms and the client inflates it in 170 ms, where the answer crosses loopback in
  tens of ms: httpx and requests offer gzip by default, so every default client paid 3x for
  large answers. zstd (the ``zstandard`` package; httpx decodes it when installed) compresses
  the same bytes to the same size in a quarter of the time and decodes in a quarter;
- it compresses whatever is large, binary tensors included, which no coding shrinks by more
  than a few per cent (random float64 bits): those are sent as they are;
- above a size compression costs more time than the wire saves on any link a service is
  served over (bench/results/wire.md: the table of bytes and times per coding): answers over
  ``DYDC_COMPRESS_MAX_BYTES`` are sent as they are, like Nginx's ``gzip_min_length``
  in reverse. Raise it for clients behind slow links.

The service's answers are complete bodies with a Content-Length (app.api.pipeline's Reply,
Starlette's Response): the body is compressed in one call, in a thread when large, so the
event loop keeps serving. A streamed answer (several body messages) goes out as it is.
``DYDC_GZIP_MIN_BYTES=0`` turns compression off.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import anyio.to_thread
from starlette.types import ASGIApp, Message, Receive, Scope, Send

try:  # an optional speed-up: without it, only gzip is offered
    import zstandard
except ImportError:  # pragma: no cover  (a declared dependency; kept optional for the image)
    zstandard = None  # type: ignore[assignment]

__all__ = ["ResponseCompressionMiddleware", "negotiate"]

# Compress these only: JSON (v1, v2 JSON, problem details) and text. Binary tensors
# (application/octet-stream) do not shrink, and images are compressed already.
_COMPRESSIBLE = (b"application/json", b"application/problem+json", b"text/")
_OFF_LOOP_BYTES = 256 * 1024  # compress bodies larger than this in a thread


def _q(parameters: str) -> float:
    for parameter in parameters.split(";"):
        name, _, value = parameter.strip().partition("=")
        if name.strip().lower() == "q":
            try:
                return float(value)
            except ValueError:
                return 0.0
    return 1.0


def negotiate(accept_encoding: bytes | None, zstd: bool = zstandard is not None) -> str | None:
    """The coding to answer with for this ``Accept-Encoding``: zstd where offered (and
    available), else gzip, else None (identity), the highest q-value first (RFC 9110
    12.5.3): ``q=0`` refuses a coding, ``*`` offers every coding not named, and identity
    named with a higher q-value than every coding we have is preferred to them."""
    if not accept_encoding:
        return None
    offered: dict[str, float] = {}
    for item in accept_encoding.decode("latin-1").split(","):
        coding, _, parameters = item.partition(";")
        coding = coding.strip().lower()
        if coding:
            offered[coding] = _q(parameters)
    star = offered.get("*", 0.0)
    choices = (["zstd"] if zstd else []) + ["gzip"]
    best: str | None = None
    best_q = 0.0
    for coding in choices:
        q = offered.get(coding, offered.get("x-gzip", star) if coding == "gzip" else star)
        if q > best_q:
            best, best_q = coding, q
    if offered.get("identity", 0.0) > best_q:  # no coding at all, preferred by its q-value
        return None
    return best


def _compressor(coding: str, gzip_level: int, zstd_level: int) -> Callable[[bytes], bytes]:
    if coding == "zstd":
        assert zstandard is not None

        def zstd(body: bytes) -> bytes:
            # a compressor per answer: one ZstdCompressor is not safe to share between
            # threads (answers over 256 KiB compress in worker threads, side by side), and
            # sharing one crashed the process under concurrent large answers
            return zstandard.ZstdCompressor(level=zstd_level).compress(body)

        return zstd

    def gzip(body: bytes) -> bytes:
        z = zlib.compressobj(gzip_level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        return z.compress(body) + z.flush()

    return gzip


class ResponseCompressionMiddleware:
    """Answers of ``min_bytes`` to ``max_bytes`` in a compressible type, compressed with the
    client's best offered coding."""

    def __init__(self, app: ASGIApp, min_bytes: int, max_bytes: int, gzip_level: int = 1,
                 zstd_level: int = 1) -> None:
        self.app = app
        self.min_bytes = min_bytes
        self.max_bytes = max_bytes
        self._compress = {coding: _compressor(coding, gzip_level, zstd_level)
                          for coding in (["zstd"] if zstandard is not None else []) + ["gzip"]}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.min_bytes:
            await self.app(scope, receive, send)
            return
        # header lines of one name are one comma-separated list (RFC 9110 5.3)
        accept = b",".join([value for name, value in scope["headers"]
                            if name == b"accept-encoding"])
        coding = negotiate(accept)
        if coding is None:
            await self.app(scope, receive, self._varying(send))
            return
        compress = self._compress[coding]
        held: Message | None = None

        async def compressing_send(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                if self._fits(message):
                    held = message  # until the body shows whether it comes in one piece
                    return
            elif held is not None and message["type"] == "http.response.body":
                start, held = held, None
                body = message.get("body", b"")
                if message.get("more_body", False):  # streamed: as it is
                    await send(start)
                else:
                    packed = (await anyio.to_thread.run_sync(compress, body)
                              if len(body) > _OFF_LOOP_BYTES else compress(body))
                    start = _recoded(start, coding, len(packed))
                    message = {**message, "body": packed}
                    await send(start)
            await send(message)

        await self.app(scope, receive, compressing_send)

    def _varying(self, send: Send) -> Send:
        """``send`` for a client offered no coding we use: an answer that another client
        would get compressed still says that it varies with Accept-Encoding (RFC 9110
        12.5.5), so that a cache does not hand this one's identity body to the other, or
        the other's to this one."""

        async def varying_send(message: Message) -> None:
            if message["type"] == "http.response.start" and self._fits(message):
                message = {**message, "headers": [*message.get("headers", ()), _VARY]}
            await send(message)

        return varying_send

    def _fits(self, start: Message) -> bool:
        """A compressible type, not encoded already, of a size in bounds."""
        size = -1
        typed = False
        for name, value in start.get("headers", ()):
            if name == b"content-type":
                if not value.startswith(_COMPRESSIBLE):
                    return False
                typed = True
            elif name == b"content-length":
                size = int(value)
            elif name == b"content-encoding":
                return False
        return typed and self.min_bytes <= size <= self.max_bytes


_VARY = (b"vary", b"Accept-Encoding")


def _recoded(start: Message, coding: str, size: int) -> Message:
    headers = [(k, v) for k, v in start.get("headers", ()) if k != b"content-length"]
    headers += [(b"content-encoding", coding.encode("ascii")),
                (b"content-length", b"%d" % size), _VARY]
    return {**start, "headers": headers}
