"""One HTTP exchange, described without doing it: what to send, and how to read the answer.

The codecs (:mod:`dydc.v1`, :mod:`dydc.v2`) build calls; :class:`dydc.Client` and
:class:`dydc.AsyncClient` send them, each its own way (sync or async), with the same retries.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import httpx

from dydc.errors import REQUEST_ID_HEADER, ApiError, error_from_response

__all__ = ["Call", "Progress", "Upload", "request_id"]

T = TypeVar("T")
Progress = Callable[[int, int], None]
"""``progress(sent_bytes, total_bytes)``, called as a large body goes out."""

_SLICE = 1 << 20  # progress is reported per MiB sent


class Upload:
    """Bytes sent so far over every call of one method call (chunks go out concurrently)."""

    def __init__(self, total: int, report: Progress) -> None:
        self.total = total
        self._sent = 0
        self._report = report
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self._sent = min(self.total, self._sent + n)
            sent = self._sent
        self._report(sent, self.total)


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    read: Callable[[httpx.Response], T]
    """Reads a successful answer."""
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    parts: Sequence[bytes | memoryview] = ()
    """The body, in pieces sent one after the other (a JSON header, then the arrays)."""
    timeout_s: float | None = None
    """A read timeout longer than the client's, for a long deadline."""
    if_missing: Callable[[], T] | None = None
    """What a 404 means, where the service may predate the route."""

    @property
    def size(self) -> int:
        return sum(memoryview(p).nbytes for p in self.parts)

    def request(self, client: httpx.Client | httpx.AsyncClient,
                content: Any = None) -> httpx.Request:
        headers = dict(self.headers)
        if self.parts:
            headers["Content-Length"] = str(self.size)
        timeout: Any = httpx.USE_CLIENT_DEFAULT
        if self.timeout_s is not None:
            timeout = client.timeout
            if timeout.read is not None and timeout.read < self.timeout_s:
                timeout = httpx.Timeout(client.timeout.connect, read=self.timeout_s,
                                        write=client.timeout.write, pool=client.timeout.pool)
        return client.build_request(self.method, self.path, params=self.query or None,
                                    headers=headers, content=content, timeout=timeout)

    def body(self, upload: Upload | None) -> bytes | Iterator[bytes]:
        if upload is None or not self.parts:
            return b"".join(self.parts)
        return self._slices(upload)

    def _slices(self, upload: Upload) -> Iterator[bytes]:
        for part in self.parts:
            view = memoryview(part).cast("B")
            for start in range(0, len(view), _SLICE):
                piece = view[start:start + _SLICE]
                yield bytes(piece)
                upload.add(len(piece))

    async def abody(self, upload: Upload) -> AsyncIterator[bytes]:
        for piece in self._slices(upload):
            yield piece

    def outcome(self, response: httpx.Response) -> T:
        """The answer read, or the error it is."""
        if response.is_success:
            try:
                return self.read(response)
            except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
                # not dydc's answer
                kind = response.headers.get("content-type", "no content type")
                raise ApiError(response.status_code, (
                    f"the answer ({kind}, {len(response.content)} bytes) is not a dydc answer "
                    f"({type(exc).__name__}: {exc}); check that the URL is the service's, "
                    "not a proxy's or another server's"), request_id=response.headers.get(
                        REQUEST_ID_HEADER)) from exc
        if response.status_code == 404 and self.if_missing is not None:
            return self.if_missing()
        raise error_from_response(response)


def request_id(response: httpx.Response) -> str | None:
    given: str | None = response.headers.get(REQUEST_ID_HEADER)
    return given
