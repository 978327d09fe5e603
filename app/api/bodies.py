"""Reading request bodies within bounds: the size of one body, and the bytes of all bodies
being read or parsed at once.

A declared ``Content-Length`` over DYDC_MAX_BODY_BYTES is refused (413) before a byte is
read, and a streamed body as soon as it goes past. Every body holds its bytes against one
:class:`BodyBudget` (DYDC_MAX_INFLIGHT_BODY_BYTES) as they arrive, until its codec has parsed
it; a body whose declared length, or whose next chunk, would take the budget past its bound
while other bodies hold bytes is refused with 503 and Retry-After, releasing what it held, so
that a flood of large bodies cannot take the process's memory. Only bytes that arrived are
charged: a body declared but not sent (``Content-Length: 67000000`` and one byte) holds one
byte, not the budget, and so cannot starve honest bodies (the read timeout then cuts it). The
buffer a declared length is read into is allocated uncommitted (``np.empty``): its pages
take memory as the bytes arrive, like the budget.

Hand-written: Starlette's ``Request.body()`` and uvicorn read without a bound (uvicorn has
no body limit at all), and neither has a budget across requests.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable

import numpy as np
from starlette.requests import ClientDisconnect
from starlette.types import Receive

from app.engine.errors import RequestTooLarge
from app.errors import BodiesInFlightFull, BodyTooLarge, MalformedBody

__all__ = ["BodyBudget", "BodyReader", "check_declared_length"]

_ALIGNMENT = 64


class BodyBudget:
    """Bytes of bodies being read or parsed at once, bounded. Used on the event loop only."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def check(self, size: int, held: int = 0) -> None:
        """BodiesInFlightFull if ``size`` more bytes, for a body holding ``held`` already,
        would take the budget past its bound while other bodies hold bytes (a body alone
        may take it all: DYDC_MAX_BODY_BYTES bounds it)."""
        if self.used + size > self.limit and self.used > held:
            raise BodiesInFlightFull(
                f"the server is reading or parsing {self.used} bytes of request bodies, and "
                f"this one would take it past its bound of {self.limit} "
                "(DYDC_MAX_INFLIGHT_BODY_BYTES); retry after a short wait"
            )

    def reserve(self, size: int, held: int = 0) -> None:
        self.check(size, held)
        self.used += size

    def release(self, size: int) -> None:
        self.used -= size


def check_declared_length(declared: str | None, limit: int) -> int | None:
    """The Content-Length header as a number (None if absent or not a number); BodyTooLarge
    when it is over ``limit``, before a byte of the body is read."""
    if declared is None or not declared.isdigit():
        return None
    if int(declared) > limit:
        raise BodyTooLarge(
            f"request body is {int(declared)} bytes; the limit is {limit} (DYDC_MAX_BODY_BYTES): "
            "split the batch"
        )
    return int(declared)


def _over_limit(limit: int) -> BodyTooLarge:
    """A body without Content-Length that turned out too large, as it streamed in."""
    return BodyTooLarge(
        f"request body is over the limit of {limit} bytes (DYDC_MAX_BODY_BYTES): split the batch"
    )


def _aligned(size: int, aligned_at: int) -> memoryview:
    raw = np.empty(size + _ALIGNMENT, dtype=np.uint8)  # uncommitted until written
    pad = -(raw.ctypes.data + aligned_at) % _ALIGNMENT
    return memoryview(raw.data)[pad:pad + size]


class BodyReader:
    """One request's body, read once, holding its bytes against the budget until
    :meth:`release` (the pipeline calls it once the body is parsed)."""

    def __init__(self, receive: Receive, declared: str | None, limit: int,
                 budget: BodyBudget) -> None:
        self._receive = receive
        self._limit = limit
        self._budget = budget
        self._declared = declared
        self.length: int | None = None
        self._held = 0
        self._size = 0
        self.read_all = False

    @property
    def declared_length(self) -> int | None:
        """The Content-Length the request declared, when it is a plain number (checked
        properly when the body is read)."""
        declared = self._declared
        return int(declared) if declared is not None and declared.isdigit() else None

    def _hold(self, size: int) -> None:
        self._budget.reserve(size, self._held)
        self._held += size

    def release(self) -> None:
        self._budget.release(self._held)
        self._held = 0

    async def _messages(self) -> AsyncGenerator[bytes, None]:
        """The body's chunks as they come, each held against the budget as it arrives (a
        declared length is only checked against it), and checked against the limit."""
        self.length = check_declared_length(self._declared, self._limit)
        if self.length is not None:
            self._budget.check(self.length)
        while not self.read_all:
            chunk = await self._next()
            self._hold(len(chunk))
            # (the server enforces Content-Length; be safe)
            if self.length is not None and self._size > self.length:
                raise MalformedBody(
                    f"request body is longer than its Content-Length ({self.length})")
            yield chunk

    async def _next(self) -> bytes:
        message = await self._receive()
        if message["type"] != "http.request":
            raise ClientDisconnect
        chunk: bytes = message.get("body", b"")
        self._size += len(chunk)
        if self._size > self._limit:
            raise _over_limit(self._limit)
        if not message.get("more_body", False):
            self.read_all = True
        return chunk

    async def read(self, watch: Callable[[bytes], None] | None = None) -> bytes:
        """The whole body. ``watch`` sees each chunk as it arrives and may refuse the body
        with :class:`RequestTooLarge` (a count of its samples): the rest of the body is then
        read and dropped, holding nothing, and the refusal raised. (Closing the connection
        on unread bytes would reset it, and a client still sending could lose the answer.)"""
        chunks = []
        refusal: RequestTooLarge | None = None
        messages = self._messages()
        try:
            async for chunk in messages:
                chunks.append(chunk)
                if watch is not None:
                    try:
                        watch(chunk)
                    except RequestTooLarge as exc:
                        refusal = exc
                        break
        finally:
            await messages.aclose()
        if refusal is not None:
            chunks.clear()
            self.release()
            while not self.read_all:
                await self._next()
            raise refusal
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def read_aligned(self, aligned_at: int) -> memoryview:
        """The whole body in one writable buffer, placed so that byte ``aligned_at`` of the
        body starts on a 64-byte boundary: arrays viewed from there need neither a copy nor
        a read-only warning. With a declared length, chunks are written straight into it."""
        self.length = check_declared_length(self._declared, self._limit)
        if self.length is None:
            body = await self.read()
            buffer = _aligned(len(body), aligned_at)
            buffer[:] = body
            return buffer
        buffer = _aligned(self.length, aligned_at)
        filled = 0
        async for chunk in self._messages():
            buffer[filled:filled + len(chunk)] = chunk
            filled += len(chunk)
        return buffer[:filled]
