"""Bounded connections under uvicorn: a read timeout for requests, and a connection limit.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) but has no timeout for a
request that is arriving: a client that sends its headers, or its body, a byte at a time
holds its connection, and with it a place in the server, for as long as it likes (measured
on main: 500 such connections stayed open for 70 s and more). Its ``limit_concurrency``
answers 503 once too many connections are open, but only after their headers arrived, and
counts the trickling ones too, so they lock every new client out.

This module adds both to uvicorn's two HTTP protocol classes (httptools and h11), at the
three points they share: a connection made, data received, the connection lost.

- **Read timeout** (``DYDC_READ_TIMEOUT_S``): a connection must deliver a complete request,
  headers and body, within the timeout of opening, or of the data that started it on a
  kept-alive connection; else it gets ``408 Request Timeout`` and is closed. A request whose
  body is complete is never cut, however long its computation takes.
- **Connection limit** (``DYDC_MAX_CONNECTIONS``): a connection beyond it gets ``503`` with
  ``Retry-After`` and is closed at once.
- **Head size** (``DYDC_MAX_HEADER_BYTES``): a request whose head (request line and header
  lines, as they arrive) goes past the limit before its end gets ``431`` and is closed,
  before the parser buffers more (httptools has no bound of its own; h11's is 16 KiB and
  answers a plain-text 400). The count and size of the fields the application receives are
  checked again by app.http.headers.

Why patch rather than configure: uvicorn offers neither setting, and ``uvicorn
app.main:app`` builds its protocol objects from its own classes, so a subclass passed with
``--http`` would protect only the deployments that remember to pass it. :func:`install` is
called by the application's lifespan, which uvicorn runs before it opens its sockets, so the
guard holds for ``python -m app``, ``uvicorn app.main:app`` and the image alike. Changing
servers (Hypercorn has a read timeout) would give up the server every benchmark here was
tuned on; a proxy in front (nginx's ``client_header_timeout`` and ``client_body_timeout``) is
the right tool where there is one, but the service must not depend on it. If a future uvicorn
changes the attributes used here, :func:`install` logs that and leaves uvicorn as it is;
tests/test_connections.py exercises the guard against a real server.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from app import metrics
from app.context import RequestRecord, record_of
from app.errors import ProblemDetails, Writer, writer_for
from app.http import headers
from app.http.access_log import log_refused
from app.http.request_id import accepted_id

__all__ = ["ConnectionLimits", "install"]

log = logging.getLogger(__name__)

_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: %s\r\n"
            b"connection: close\r\nx-request-id: %s\r\ncontent-length: %d\r\n\r\n%s")
_HEAD_TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                   b"content-type: %s\r\nconnection: close\r\n"
                   b"x-request-id: %s\r\ncontent-length: %d\r\n\r\n%s")
_FULL = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: %s\r\n"
         b"retry-after: 1\r\nconnection: close\r\nx-request-id: %s\r\n"
         b"content-length: %d\r\n\r\n%s")


# the problem types of the middlewares' and the routes' answers of the same status
_SLUGS = {431: headers.TOO_LARGE, 503: "service-unavailable"}


def _answer(template: bytes, status: int, detail: str, record: RequestRecord | None = None,
            path: str = "") -> bytes:
    """A refusal written before (or instead of) the application, in the format of the
    protocol of ``path`` (where the request line arrived) by the writer the routes and the
    middlewares use (app.errors.writer_for), with an id as every answer has (the request's
    where the application had its record, else a new one) as the problem's ``instance``."""
    record = record or RequestRecord(accepted_id(None))
    response = writer_for(path, _writers)(
        ProblemDetails(status, detail, _SLUGS.get(status), extra={"instance": record.instance}))
    body = bytes(response.body)
    record.closed_bytes = len(body)  # for the access log: the body the client got
    content_type = response.headers["content-type"].encode("latin-1")
    return template % (content_type, record.id.encode("ascii"), len(body), body)


def _request_line(protocol: Any) -> tuple[str, str]:
    """The method and path of the head that is arriving, as far as its first bytes tell
    ("" for what has not arrived)."""
    first, _, _ = getattr(protocol, _FIRST, (b"", 0.0, 0.0))
    method, _, rest = first.partition(b"\n")[0].partition(b" ")
    target = rest.partition(b" ")[0].partition(b"?")[0]
    if not method.isalpha() or len(method) > 16:
        return "", ""
    return method.decode("ascii"), target.decode("latin-1")


def _refused_on_the_wire(protocol: Any, status: int, template: bytes, detail: str) -> bytes:
    """The answer to a head refused before the application saw it, counted as the
    middlewares count theirs (dydc_requests_total for a POST) and logged."""
    method, path = _request_line(protocol)
    record = RequestRecord(accepted_id(None))
    answer = _answer(template, status, detail, record, path)
    if method == "POST":
        metrics.child(metrics.REQUESTS, "unknown", "none", str(status)).inc()
    _, arrived, started = getattr(protocol, _FIRST, (b"", time.time(), time.perf_counter()))
    log_refused(record.id, method or "-", path or "-", status, arrived, started, 0,
                record.closed_bytes)
    return answer


@dataclass
class ConnectionLimits:
    read_timeout_s: float
    max_connections: int
    max_header_bytes: int = 16_384


_limits: ConnectionLimits | None = None
_writers: Mapping[str, Writer] = {}  # each API's error writer by its prefix (install)
_ATTRIBUTE = "_dydc_read_timer"
_HEAD = "_dydc_head_bytes"  # bytes of the request head that is arriving
# its first bytes (the request line, for the records of a refusal), with when they came
_FIRST = "_dydc_head_first"
_FIRST_BYTES = 512


def _head_refused(protocol: Any, data: bytes) -> bool:
    """While a head arrives: True, having answered 431 and closed, once its bytes go past
    DYDC_MAX_HEADER_BYTES before its end (the blank line) does."""
    assert _limits is not None
    limit = _limits.max_header_bytes
    before = getattr(protocol, _HEAD, 0)
    if not before:
        setattr(protocol, _FIRST, (data[:_FIRST_BYTES], time.time(), time.perf_counter()))
    if before + len(data) <= limit:
        setattr(protocol, _HEAD, before + len(data))
        return False
    window = limit - before  # where the blank line must end for the head to fit
    crlf, lf = data.find(b"\n\r\n", 0, window), data.find(b"\n\n", 0, window)
    if crlf >= 0 or lf >= 0:  # the head ends within the limit; a body follows
        return False
    _disarm(protocol)
    protocol.transport.write(_refused_on_the_wire(
        protocol, 431, _HEAD_TOO_LARGE,
        f"the request's head is over {limit} bytes (DYDC_MAX_HEADER_BYTES): send fewer or "
        "shorter header fields"))
    metrics.REJECTIONS.labels("headers").inc()
    protocol.transport.close()
    return True


def _timed_out(protocol: Any) -> None:
    setattr(protocol, _ATTRIBUTE, None)
    transport = getattr(protocol, "transport", None)
    if transport is None or transport.is_closing():
        return
    cycle = getattr(protocol, "cycle", None)
    assert _limits is not None
    detail = (f"the request was not complete within {_limits.read_timeout_s:g} s "
              "(DYDC_READ_TIMEOUT_S)")
    if cycle is not None and not cycle.response_complete:
        if not cycle.response_started:  # the application is reading this request: its
            record = record_of(cycle.scope)  # access log and counts record the 408
            if record is not None:
                record.closed_with = 408
            transport.write(_answer(_TIMEOUT, 408, detail, record,
                                    cycle.scope.get("path", "")))
    elif getattr(protocol, _HEAD, 0):  # a head was arriving: the application never saw it
        transport.write(_refused_on_the_wire(protocol, 408, _TIMEOUT, detail))
    else:  # a connection that sent nothing, or nothing since its last answer
        transport.write(_answer(_TIMEOUT, 408, detail))
    metrics.CONNECTIONS_CLOSED.labels("read_timeout").inc()
    transport.close()


def _arm(protocol: Any) -> None:
    if getattr(protocol, _ATTRIBUTE, None) is None and _limits is not None:
        loop = asyncio.get_running_loop()
        setattr(protocol, _ATTRIBUTE,
                loop.call_later(_limits.read_timeout_s, _timed_out, protocol))


def _disarm(protocol: Any) -> None:
    timer = getattr(protocol, _ATTRIBUTE, None)
    if timer is not None:
        timer.cancel()
        setattr(protocol, _ATTRIBUTE, None)


def _connection_made(original: Callable[..., None]) -> Callable[..., None]:
    def connection_made(self: Any, transport: Any) -> None:
        original(self, transport)
        if _limits is None:
            return
        if len(self.connections) > _limits.max_connections:
            transport.write(_answer(
                _FULL, 503,
                f"too many open connections (DYDC_MAX_CONNECTIONS = {_limits.max_connections}); "
                "retry shortly"))
            metrics.CONNECTIONS_CLOSED.labels("max_connections").inc()
            transport.close()
            return
        _arm(self)

    return connection_made


def _data_received(original: Callable[..., None]) -> Callable[..., None]:
    def data_received(self: Any, data: bytes) -> None:
        cycle = self.cycle
        # a head is arriving: the first request, or the next one after a whole exchange
        if (cycle is None or (cycle.response_complete and not cycle.more_body)) \
                and _limits is not None and _head_refused(self, data):
            return
        original(self, data)
        if self.cycle is not cycle:  # a head ended
            setattr(self, _HEAD, 0)
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            _arm(self)  # a request is arriving (a new one on a kept-alive connection)
        elif not cycle.more_body:
            _disarm(self)  # complete: the application has it all

    return data_received


def _connection_lost(original: Callable[..., None]) -> Callable[..., None]:
    def connection_lost(self: Any, exc: Exception | None) -> None:
        _disarm(self)
        original(self, exc)

    return connection_lost


def _protocols() -> list[type]:
    found: list[type] = []
    try:
        from uvicorn.protocols.http.h11_impl import H11Protocol
        found.append(H11Protocol)
    except ImportError:  # pragma: no cover  (h11 is one of uvicorn's own dependencies)
        pass
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
        found.append(HttpToolsProtocol)
    except ImportError:  # httptools is optional
        pass
    return found


def install(limits: ConnectionLimits, writers: Mapping[str, Writer] | None = None) -> bool:
    """Guard uvicorn's HTTP protocols with ``limits`` (again: the new limits replace the
    old), refusing in the format of each API's prefix (``writers``, as app.http.stack's; problem
    details elsewhere). False, with a warning, where uvicorn's protocols lack what the guard
    needs."""
    global _limits, _writers
    _limits = limits
    _writers = dict(writers or {})
    installed = True
    for cls in _protocols():
        if getattr(cls, "_dydc_guarded", False):
            continue
        if not all(hasattr(cls, name) for name in
                   ("connection_made", "data_received", "connection_lost")):
            log.warning("uvicorn's %s has changed: requests have no read timeout and "
                        "connections no limit", cls.__name__)
            installed = False
            continue
        cls.connection_made = _connection_made(cls.connection_made)  # type: ignore[attr-defined]
        cls.data_received = _data_received(cls.data_received)  # type: ignore[attr-defined]
        cls.connection_lost = _connection_lost(cls.connection_lost)  # type: ignore[attr-defined]
        cls._dydc_guarded = True  # type: ignore[attr-defined]
    return installed
