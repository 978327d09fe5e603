"""The one request pipeline: every computation request, whatever its protocol, goes

    read the body (bounded) -> decode (off the event loop when large) -> prepare -> run
    (stopped if the client goes away) -> encode

here, and any failure on the way is written by the request's own :class:`Codec`. v1 JSON
(``app.api.v1``) and v2 JSON and binary (``app.api.v2``) are codecs over :func:`serve`; the
application (``app.api.dispatch``) calls it straight from ASGI for the computation routes,
and FastAPI's routes call it too (``respond``), so that both give the same answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

from starlette.datastructures import Headers, QueryParams
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from app import metrics
from app.api.bodies import BodyBudget, BodyReader
from app.api.instrumentation import RequestLabels, record
from app.config import Settings
from app.context import record_of
from app.engine import Comparison, Engine, Job, JobResult
from app.engine.errors import InvalidRequest, listed
from app.errors import CLIENT_CLOSED_REQUEST, ProblemDetails, problem_of, with_instance

__all__ = ["EXPRESSION_OFFLOAD_BYTES", "Codec", "Decoded", "Incoming", "Reply", "offload",
           "respond", "serve", "shutdown_reply"]

# Bodies at least this large are parsed and validated in a worker thread, so that the event
# loop keeps answering (health probes, small requests) while they are.
OFFLOAD_BYTES = 1 << 20
# A caller's expression costs its parsing and checking, by its text rather than its samples:
# about a millisecond per kilobyte of formula (200 new formulas of 1,000 nodes each, parsed
# here, held /healthz for 0.9 s), so a body of an expression is offloaded from this size.
EXPRESSION_OFFLOAD_BYTES = 2048


@dataclass
class Reply:
    """A response ready to send."""

    status: int
    body: bytes
    media_type: str
    headers: dict[str, str] = field(default_factory=dict)

    def start(self) -> Message:
        headers = [(b"content-type", self.media_type.encode("latin-1")),
                   (b"content-length", b"%d" % len(self.body))]
        headers += [(k.lower().encode("latin-1"), v.encode("latin-1"))
                    for k, v in self.headers.items()]
        return {"type": "http.response.start", "status": self.status, "headers": headers}

    async def send(self, send: Send) -> None:
        await send(self.start())
        await send({"type": "http.response.body", "body": self.body})

    def response(self) -> Response:
        return Response(self.body, status_code=self.status, media_type=self.media_type,
                        headers=self.headers or None)


_NO_QUERY = QueryParams()  # (immutable: one for every request without a query string)


def _content_length(scope: Scope) -> str | None:
    """The Content-Length header's value, without building the request's Headers (most
    requests never need them)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return str(value.decode("latin-1"))
    return None


class Incoming:
    """One computation request as the codecs see it: path parameters, query, headers and
    the body, read on demand within its bounds."""

    def __init__(self, scope: Scope, receive: Receive, path_params: dict[str, str],
                 settings: Settings, budget: BodyBudget) -> None:
        self.scope = scope
        self.receive = receive
        self.path_params = path_params
        self.settings = settings
        self.labels = RequestLabels()
        self.body = BodyReader(receive, _content_length(scope), settings.max_body_bytes,
                               budget)
        self._large: contextlib.ExitStack | None = None

    def serving_large(self, engine: Engine) -> None:
        """From now until :meth:`finish`: a large request, which graphs being built step
        aside for (app.engine.compiled.pacing)."""
        if self._large is None:
            self._large = contextlib.ExitStack()
            self._large.enter_context(engine.serving_large())

    def finish(self) -> None:
        """The request is over (its answer sent, or never to be)."""
        if self._large is not None:
            self._large.close()
            self._large = None

    @cached_property
    def headers(self) -> Headers:
        return Headers(scope=self.scope)

    @cached_property
    def query(self) -> QueryParams:
        raw = self.scope.get("query_string", b"")
        return QueryParams(raw) if raw else _NO_QUERY

    @property
    def method(self) -> str:
        return str(self.scope["method"])

    @property
    def path(self) -> str:
        return str(self.scope["path"])


@dataclass
class Decoded:
    """A request turned into the engine's job, with what its codec needs to answer it."""

    job: Job
    context: Any = None


class Codec(Protocol):
    """One protocol's translation between HTTP and the engine."""

    endpoint: str  # the request metrics' endpoint label
    # the query options its route takes (app.api.computation sets them from the route's
    # OpenAPI declaration), None where they are not checked
    query_options: frozenset[str] | None

    async def decode(self, request: Incoming, engine: Engine) -> Decoded: ...

    async def run(self, engine: Engine, decoded: Decoded) -> Any: ...

    def encode(self, decoded: Decoded, result: Any, started: float) -> Reply: ...

    def error(self, problem: ProblemDetails) -> Reply: ...


async def offload(size: int, work: Any, *args: Any, at: int = OFFLOAD_BYTES) -> Any:
    """``work(*args)`` here for a small body, in a worker thread for one of ``at`` bytes or
    more."""
    if size < at:
        return work(*args)
    return await asyncio.to_thread(work, *args)


# A request still running this long after its body was read starts watching its connection:
# most answer sooner, and a watch (a task awaiting the next ASGI message) costs each request
# about a fifth of the event loop's time at 16 samples (measured with an in-process driver).
_WATCH_AFTER_S = 0.02


async def _run(codec: Codec, engine: Engine, decoded: Decoded, receive: Receive) -> Any:
    """Run the request while watching the connection: a client that goes away cancels the
    run, and with it the job it awaits (the engine withdraws a queued job; a worker stops a
    running one at its next slice)."""
    task = asyncio.current_task()
    assert task is not None
    gone = False
    watch: asyncio.Future[Message] | None = None

    def watch_done(done: asyncio.Future[Message]) -> None:
        nonlocal gone
        if done.cancelled() or done.exception() is not None:
            return
        if done.result().get("type") == "http.disconnect":
            gone = True
            task.cancel()

    def start_watching() -> None:
        nonlocal watch
        watch = asyncio.ensure_future(receive())
        watch.add_done_callback(watch_done)

    timer = asyncio.get_running_loop().call_later(_WATCH_AFTER_S, start_watching)
    try:
        return await codec.run(engine, decoded)
    except asyncio.CancelledError:
        if gone and task.cancelling() <= 1:  # ours, not the server's
            task.uncancel()
            raise ClientDisconnect from None
        raise
    finally:
        timer.cancel()
        if watch is not None:
            watch.cancel()


# Taken on every v1 route and ignored where it means nothing (evaluate, compare): the values
# do not depend on it, and a client that sends the same options everywhere is not wrong
_IGNORED_QUERY = frozenset({"strategy"})


def _check_query(query: QueryParams, known: frozenset[str] | None) -> None:
    """An option the route does not take is refused, naming the closest it does; so is one
    given twice (the last had won silently, as a JSON key given twice would)."""
    if known is None or not query:
        return
    if len(query) != len(query.multi_items()):
        names = [name for name, _ in query.multi_items()]
        twice = sorted({name for name in names if names.count(name) > 1})
        raise InvalidRequest(
            f"the query gives {listed(twice, quoted=True)} more than once; give each option "
            "once (which one was meant is ambiguous)")
    unknown = [name for name in query if name not in known and name not in _IGNORED_QUERY]
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(known), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise InvalidRequest(
            f"unknown query option {listed(unknown, quoted=True)}{hint}; this route takes: "
            f"{', '.join(sorted(known))}")


async def serve(codec: Codec, request: Incoming, engine: Engine) -> Reply | None:
    """The answer to one computation request; None when its client went away."""
    started = time.perf_counter()
    labels = request.labels
    reply: Reply | None = None
    metrics.REQUESTS_IN_FLIGHT.inc()
    try:
        _check_query(request.query, codec.query_options)
        # a large request (a large body, or as many samples as compiled graphs are for) has
        # graphs being built step aside from the moment it is known to be large until its
        # answer is sent (the caller's request.finish())
        declared = request.body.declared_length
        if declared is not None and declared >= OFFLOAD_BYTES:
            request.serving_large(engine)
        try:
            decoded = await codec.decode(request, engine)
        finally:
            request.body.release()
        if engine.large(decoded.job.n):
            request.serving_large(engine)
        result = await _run(codec, engine, decoded, request.receive)
        ran = result.result if isinstance(result, Comparison) else result  # its reference
        if isinstance(ran, JobResult):  # (scenarios say what ran themselves: labels.took)
            labels.ran(decoded.job, ran)
            labels.strategy = ran.strategy or "none"
        reply = codec.encode(decoded, result, started)
    except ClientDisconnect:
        # gone, or cut by the server's read timeout (a 408 it wrote itself)
        entry = record_of(request.scope)
        if entry is not None and entry.closed_with is None:
            entry.closed_with = CLIENT_CLOSED_REQUEST
        labels.status = entry.closed_with if entry is not None and entry.closed_with \
            else CLIENT_CLOSED_REQUEST
    except asyncio.CancelledError:  # the server gave up waiting for us (shutdown)
        labels.status = 503
        raise
    except Exception as exc:
        reply = codec.error(with_instance(problem_of(exc, request.method, request.path),
                                          request.scope))
        if not request.body.read_all:
            # answered before its body was read (413, 503, 404...): close rather than read
            # and discard the rest, which may be many megabytes
            reply.headers["Connection"] = "close"
    finally:
        if reply is not None:
            labels.status = reply.status
        metrics.REQUESTS_IN_FLIGHT.dec()
        record(labels, codec.endpoint, started)
    return reply


def shutdown_reply(codec: Codec) -> Reply:
    """For a request the server cancels at the end of its graceful shutdown."""
    return codec.error(ProblemDetails(503, "the service shut down before this request finished; "
                               "retry on another replica", "service-unavailable",
                               {"Retry-After": "1"}))


async def respond(codec: Codec, request: Request, **path_params: str) -> Response:
    """:func:`serve` for a FastAPI route."""
    state = request.app.state
    incoming = Incoming(request.scope, request.receive, path_params, state.settings,
                        state.bodies)
    try:
        reply = await serve(codec, incoming, state.engine)
    finally:
        incoming.finish()  # (Starlette sends the response after this returns)
    if reply is None:  # nobody to answer
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    return reply.response()
