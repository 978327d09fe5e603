"""The access log: one line per request, written when the answer is complete, with the
request's id and what the route recorded (app.context).

``text`` gives a readable line, ``json`` one JSON object a line with the fields time, id,
method, path, routine, strategy, n, status, queue_ms, compute_ms, total_ms, bytes_in and
bytes_out (absent values are null). The path is logged without its query string and no
header is logged, so an API key never reaches the log. Lines go to the ``dydc.access``
logger, which writes them to stdout itself: uvicorn configures only its own loggers.
uvicorn's own access line (no id, no fields) is off under ``python -m app``; with the
``uvicorn`` command pass ``--no-access-log``.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import logging
import sys
import time
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.context import record_of

__all__ = ["FIELDS", "AccessLogMiddleware", "access_logger", "flush_access_log",
           "log_refused"]

FIELDS = ("time", "id", "method", "path", "routine", "strategy", "n", "status", "queue_ms",
          "compute_ms", "total_ms", "bytes_in", "bytes_out")
LOGGER = "dydc.access"


class _LazyFlushHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Keeps lines and writes them together, at most ``FLUSH_S`` after the first (a timer on
    the event loop), and at exit (logging flushes every handler): a write and a flush per
    line (a system call per request, with the interpreter's lock given up and taken back
    around it) cost a fifth of the service's throughput for small requests (measured with
    wrk at c=64, docs/benchmarks.md). Off an event loop a line is written at once.

    :meth:`write_line` takes a line already formatted: the access log hands its lines here
    directly while this is the logger's one handler as :func:`access_logger` set it up (a
    LogRecord and the logging module's walk to this handler cost about a tenth of a small
    request's time on the event loop)."""

    FLUSH_S = 0.1

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._pending = False
        self._lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.write_line(line)

    def write_line(self, line: str) -> None:
        self._lines.append(line)
        if not self._pending:
            try:
                asyncio.get_running_loop().call_later(self.FLUSH_S, self._flush_now)
            except RuntimeError:  # not on an event loop: no timer to wait for
                self.flush()
                return
            self._pending = True

    def flush(self) -> None:
        lines, self._lines = self._lines, []
        if getattr(self.stream, "closed", False):  # (closed at exit: dropped)
            return
        if lines:
            try:
                self.stream.write(self.terminator.join(lines) + self.terminator)
            except Exception:
                self.handleError(logging.LogRecord(LOGGER, logging.INFO, __file__, 0,
                                                   lines[0], None, None))
        super().flush()

    def _flush_now(self) -> None:
        self._pending = False
        self.flush()


_PLAIN = logging.Formatter("%(message)s")


def access_logger() -> logging.Logger:
    """``dydc.access``, with a stdout handler of its own (once)."""
    logger = logging.getLogger(LOGGER)
    if not logger.handlers:
        handler = _LazyFlushHandler(sys.stdout)
        handler.setFormatter(_PLAIN)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        # logging's own flush at exit does not reach it where logging was configured again
        # (dictConfig forgets the handlers it had), and the lines of the answers sent at the
        # end of a graceful shutdown, after the event loop's last timer, were lost
        atexit.register(handler.flush)
    return logger


def flush_access_log() -> None:
    """Write the lines kept for the flush timer now (at shutdown: the loop may not turn
    again)."""
    for handler in logging.getLogger(LOGGER).handlers:
        handler.flush()


@functools.lru_cache(maxsize=4)
def _second(epoch_s: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch_s))


def _escaped(char: str) -> str:
    if char in '"\\':
        return "\\" + char
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def _quoted(text: str) -> str:
    """``text`` safe in the line: a path decodes %0a, %1b or %22, and written raw they forged
    a second line, sent escapes to a terminal, or ended the quotes early; a backslash, a
    quote and every unprintable character are escaped instead."""
    if text.isprintable() and '"' not in text and "\\" not in text:
        return text  # (nearly every path: checked without a copy)
    return "".join(c if c.isprintable() and c not in '"\\' else _escaped(c) for c in text)


def _text(entry: dict[str, Any]) -> str:
    who, path = _quoted(str(entry["id"])), _quoted(entry["path"])
    line = (f'{entry["time"]} {who} "{entry["method"]} {path}" '
            f'{entry["status"]} {entry["total_ms"]}ms in={entry["bytes_in"]} '
            f'out={entry["bytes_out"]}')
    extra = " ".join(f"{k}={entry[k]}" for k in ("routine", "strategy", "n", "queue_ms",
                                                  "compute_ms") if entry[k] is not None)
    return f"{line} {extra}" if extra else line


def _direct_handler(logger: logging.Logger) -> _LazyFlushHandler | None:
    """The handler that :func:`access_logger` installed, where it is still the logger's one
    handler and nothing (a filter, another formatter, a level) would change what logging
    does with a line; else None (the line goes through logging)."""
    handlers = logger.handlers
    if len(handlers) != 1 or logger.filters or logger.disabled:
        return None
    handler = handlers[0]
    if (type(handler) is not _LazyFlushHandler or handler.filters
            or handler.formatter is not _PLAIN or handler.level > logging.INFO):
        return None
    return handler


class AccessLogMiddleware:
    """Inside RequestIdMiddleware (it reads the id), outside compression (it counts the
    bytes on the wire)."""

    def __init__(self, app: ASGIApp, log_format: str = "text",
                 logger: logging.Logger | None = None) -> None:
        self.app = app
        self.format = _text if log_format == "text" else self._json
        self.logger = logger or access_logger()
        global _serving
        _serving = self  # the one :func:`log_refused` writes with

    @staticmethod
    def _json(entry: dict[str, Any]) -> str:
        return orjson.dumps(entry).decode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        at = time.time()
        bytes_in = 0
        bytes_out = 0
        status = 0  # until the app starts its response

        async def counted_receive() -> Message:
            nonlocal bytes_in
            message = await receive()
            if message["type"] == "http.request":
                bytes_in += len(message.get("body", b""))
            return message

        async def counted_send(message: Message) -> None:
            nonlocal bytes_out, status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                bytes_out += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, counted_receive, counted_send)
        finally:
            if not status:  # the server's own answer (408), the client gone (499), or 500
                record = record_of(scope)
                status = (record.closed_with if record and record.closed_with else 500)
                bytes_out += record.closed_bytes if record else 0
            if self.logger.isEnabledFor(logging.INFO):
                self.write(self._entry(scope, at, started, status, bytes_in, bytes_out))

    def write(self, entry: dict[str, Any]) -> None:
        """One line, in the configured format."""
        line = self.format(entry)
        direct = _direct_handler(self.logger)
        if direct is not None:
            direct.write_line(line)
        else:  # handle() a record made here: logger.info() would also walk the stack to
            # find its caller, which cost more than the line (measured)
            self.logger.handle(logging.LogRecord(LOGGER, logging.INFO, __file__, 0, line,
                                                 None, None))

    @staticmethod
    def _entry(scope: Scope, at: float, started: float, status: int, bytes_in: int,
               bytes_out: int) -> dict[str, Any]:
        record = record_of(scope)
        return {
            "time": f"{_second(int(at))}.{int(at % 1 * 1000):03d}Z",
            "id": record.id if record else None,
            "method": scope["method"],
            "path": scope["path"],
            "routine": record.routine if record else None,
            "strategy": record.strategy if record else None,
            "n": record.n if record else None,
            "status": status,
            "queue_ms": record.queue_ms if record else None,
            "compute_ms": record.compute_ms if record else None,
            "total_ms": round((time.perf_counter() - started) * 1e3, 3),
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
        }


_serving: AccessLogMiddleware | None = None  # the access log of the service being served


def log_refused(request_id: str, method: str, path: str, status: int, arrived: float,
                started: float, bytes_in: int, bytes_out: int) -> None:
    """A line for a request the server refused before the application saw it (app.server:
    a head over its limit, or not complete within the read timeout), in the service's
    format; nothing where the access log is off. ``arrived``: ``time.time()`` when the
    head's first bytes came, ``started`` the same on ``time.perf_counter()``."""
    log = _serving
    if log is None or not log.logger.isEnabledFor(logging.INFO):
        return
    log.write({
        "time": f"{_second(int(arrived))}.{int(arrived % 1 * 1000):03d}Z", "id": request_id,
        "method": method, "path": path, "routine": None, "strategy": None, "n": None,
        "status": status, "queue_ms": None, "compute_ms": None,
        "total_ms": round((time.perf_counter() - started) * 1e3, 3),
        "bytes_in": bytes_in, "bytes_out": bytes_out,
    })
