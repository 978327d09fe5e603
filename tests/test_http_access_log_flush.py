"""The access log's stdout handler writes its lines together within FLUSH_S: a write and a
flush per request cost the service a fifth of its small-request throughput; and the access
log hands lines to it directly only while nothing in logging's setup would change them."""

from __future__ import annotations

import asyncio
import io
import logging

import pytest
from starlette.types import Message, Receive, Scope, Send

from app.http import access_log
from app.http.access_log import AccessLogMiddleware, _LazyFlushHandler

pytestmark = pytest.mark.anyio


class _Stream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0
        self.flushed = ""

    def flush(self) -> None:
        self.flushes += 1
        self.flushed = self.getvalue()


def _record(i: int) -> logging.LogRecord:
    return logging.LogRecord("dydc.access", logging.INFO, __file__, 0, f"line {i}", None, None)


async def test_lines_on_an_event_loop_are_flushed_together_by_a_timer() -> None:
    stream = _Stream()
    handler = _LazyFlushHandler(stream)
    handler.FLUSH_S = 0.01
    for i in range(100):
        handler.emit(_record(i))
    assert stream.getvalue() == "" and stream.flushes == 0  # kept: the timer is pending
    while stream.flushes == 0:
        await asyncio.sleep(0.005)
    assert stream.flushes == 1
    assert stream.flushed == stream.getvalue() == "".join(f"line {i}\n" for i in range(100))
    handler.emit(_record(100))  # a later line gets a timer of its own
    while stream.flushes == 1:
        await asyncio.sleep(0.005)
    assert stream.flushed.endswith("line 100\n")


def test_lines_off_an_event_loop_are_flushed_at_once() -> None:
    stream = _Stream()
    handler = _LazyFlushHandler(stream)
    handler.emit(_record(1))
    assert stream.flushes == 1 and stream.flushed == "line 1\n"


def test_lines_kept_are_written_when_logging_flushes_at_exit() -> None:
    stream = _Stream()
    handler = _LazyFlushHandler(stream)

    async def two_lines() -> None:
        handler.emit(_record(1))
        handler.write_line("line 2")

    asyncio.run(two_lines())  # the loop closes before the timer fires
    assert stream.getvalue() == ""
    handler.flush()  # as logging.shutdown() does at exit
    assert stream.flushed == "line 1\nline 2\n"


def _logger(name: str) -> tuple[logging.Logger, _Stream]:
    stream = _Stream()
    logger = logging.getLogger(f"test.access.{name}")
    logger.handlers.clear()
    logger.filters.clear()
    handler = _LazyFlushHandler(stream)
    handler.setFormatter(access_log._PLAIN)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger, stream


async def _one_request(logger: logging.Logger) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        pass

    scope = {"type": "http", "method": "GET", "path": "/v1/routines", "headers": []}
    await AccessLogMiddleware(app, "text", logger)(scope, receive, send)


def test_the_access_log_writes_to_its_own_handler_directly() -> None:
    logger, stream = _logger("direct")
    records: list[logging.LogRecord] = []
    logger.handlers[0].handle = records.append  # type: ignore[method-assign]
    asyncio.run(_one_request(logger))
    logger.handlers[0].flush()
    assert records == []  # no LogRecord: the line went to write_line
    assert '"GET /v1/routines" 200' in stream.flushed


@pytest.mark.parametrize("change", ["filter", "formatter", "second handler", "level"])
def test_any_change_to_its_logging_setup_sends_lines_through_logging(change: str) -> None:
    logger, stream = _logger(change.replace(" ", "_"))
    handler = logger.handlers[0]
    seen: list[str] = []
    if change == "filter":
        logger.addFilter(lambda record: seen.append(record.getMessage()) or True)
    elif change == "formatter":
        handler.setFormatter(logging.Formatter("access: %(message)s"))
    elif change == "second handler":
        other = logging.Handler()
        other.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
        logger.addHandler(other)
    else:
        handler.setLevel(logging.WARNING)  # the operator turned this handler's lines off
    asyncio.run(_one_request(logger))
    handler.flush()
    if change == "formatter":
        assert stream.flushed.startswith('access: ') and '"GET /v1/routines" 200' in stream.flushed
    elif change == "level":
        assert stream.flushed == ""
    else:
        assert len(seen) == 1 and '"GET /v1/routines" 200' in seen[0]
        assert '"GET /v1/routines" 200' in stream.flushed
