"""The one place where exceptions become HTTP responses: RFC 9457 problem details, and under
``/v2`` the Open Inference Protocol's ``{"error": "..."}``.

Each domain error has its status here, and nothing else in the service picks one. No
exception reaches the client as a traceback: anything unexpected is logged and answered 500
with a generic problem.

Under ``/v2`` the statuses are v1's with one change: what v1 answers 422 (a request that
cannot be computed as sent, malformed JSON or binary framing included) v2 answers 400, as the
protocol says a failed request is "typically 400" and its clients expect. 404 (unknown model
or version), 413, 503 and 504 are the same in both.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from app.engine.errors import (
    DeadlineExceeded,
    EngineError,
    InvalidRequest,
    QueueFull,
    RequestTooLarge,
    RoutineFailed,
    ServiceUnavailable,
    StrategyCapExceeded,
    UnknownRoutine,
)
from app.http.record import instance_of

__all__ = [
    "CLIENT_CLOSED_REQUEST",
    "V2_PREFIX",
    "BodyTooLarge",
    "MalformedBody",
    "MalformedFraming",
    "UnknownVersion",
    "error_response",
    "install_error_handlers",
    "problem_response",
    "status_for",
    "v2_errors",
]

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
# nginx's status for a client that went away before its answer (metrics only: nobody reads it)
CLIENT_CLOSED_REQUEST = 499


class MalformedBody(InvalidRequest):
    """The body is not JSON, or not the JSON object the endpoint reads (HTTP 422)."""


class BodyTooLarge(RequestTooLarge):
    """The body is over DYDC_MAX_BODY_BYTES (HTTP 413), noticed before it is read in full."""


class MalformedFraming(MalformedBody):
    """v2 binary tensor data that does not add up: a JSON header length past the body, sizes
    that do not sum to the bytes sent, a shape that disagrees with its bytes (HTTP 400)."""


class UnknownVersion(EngineError):
    """v2: the model exists but not in the requested version (HTTP 404)."""


# (status, slug) per domain error; the most specific class wins.
_STATUS: list[tuple[type[EngineError], int, str]] = [
    (UnknownRoutine, 404, "unknown-routine"),
    (UnknownVersion, 404, "unknown-version"),
    (StrategyCapExceeded, 422, "strategy-cap-exceeded"),
    (RoutineFailed, 422, "routine-failed"),
    (MalformedFraming, 422, "malformed-framing"),
    (MalformedBody, 422, "malformed-body"),
    (InvalidRequest, 422, "invalid-request"),
    (BodyTooLarge, 413, "body-too-large"),
    (RequestTooLarge, 413, "batch-too-large"),
    (DeadlineExceeded, 504, "deadline-exceeded"),
    (QueueFull, 503, "queue-full"),
    (ServiceUnavailable, 503, "service-unavailable"),
]


def problem_response(status: int, detail: str, slug: str | None = None,
                     headers: dict[str, str] | None = None, **extra: Any) -> Response:
    body = {
        "type": f"urn:dydc:problem:{slug}" if slug else "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        **extra,
    }
    return Response(orjson.dumps(body), status_code=status, media_type=PROBLEM_JSON,
                    headers=headers)


def _classify(exc: EngineError) -> tuple[int, str]:
    for cls, status, slug in _STATUS:
        if isinstance(exc, cls):
            return status, slug
    return 500, "internal-error"


def status_for(exc: BaseException) -> int:
    """The status a request that raised ``exc`` is answered with (for metrics)."""
    if isinstance(exc, _V2Failure):
        return _v2_status(status_for(exc.cause))
    if isinstance(exc, EngineError):
        return _classify(exc)[0]
    if isinstance(exc, (RequestValidationError, ValidationError)):
        return 422
    if isinstance(exc, StarletteHTTPException):
        return exc.status_code
    if isinstance(exc, ClientDisconnect):
        return CLIENT_CLOSED_REQUEST
    return 500


def _engine_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, EngineError)
    status, slug = _classify(exc)
    headers = {"Retry-After": "1"} if status == 503 else None
    return _respond(request, status, exc.message, slug, headers)


def _location(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc if p != "body") or "body"


def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, (RequestValidationError, ValidationError))
    errors = [
        {"loc": _location(tuple(e["loc"])), "msg": e["msg"]} for e in exc.errors()
    ]
    detail = "; ".join(f"{e['loc']}: {e['msg']}" for e in errors)
    return _respond(request, 422, detail, "invalid-request", errors=errors)


def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    if exc.status_code == 404:
        detail = f"no endpoint at {request.url.path}; see /docs for the API"
    elif exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}"
    return _respond(request, exc.status_code, detail, headers=exc.headers)


def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return _respond(request, 500, "internal error; it has been logged", "internal-error")


# -- the Open Inference Protocol (v2) -------------------------------------------------------

V2_PREFIX = "/v2"


def _speaks_v2(request: Request) -> bool:
    path = request.url.path
    return path == V2_PREFIX or path.startswith(V2_PREFIX + "/")


def _v2_status(status: int) -> int:
    return 400 if status == 422 else status


def _respond(request: Request, status: int, detail: str, slug: str | None = None,
             headers: Mapping[str, str] | None = None, **extra: Any) -> Response:
    """A problem, or under /v2 the protocol's error object with the v2 status."""
    headers = dict(headers) if headers is not None else None
    if not _speaks_v2(request):
        if (instance := instance_of(request.scope)) is not None:
            extra["instance"] = instance
        return problem_response(status, detail, slug, headers, **extra)
    return Response(orjson.dumps({"error": detail}), status_code=_v2_status(status),
                    media_type="application/json", headers=headers)


class _V2Failure(Exception):
    """What a v2 route raised, tagged so that ``status_for`` (request metrics) counts the
    status v2 answers; the response is the one its cause gets."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


@contextmanager
def v2_errors() -> Iterator[None]:
    """Wrap the body of a v2 route, inside ``observe``, so its metrics count v2 statuses."""
    try:
        yield
    except Exception as exc:
        raise _V2Failure(exc) from exc


def _v2_failure(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, _V2Failure)
    return error_response(request, exc.cause)


_HANDLERS: list[tuple[type[Exception], Callable[[Request, Exception], Response]]] = [
    (EngineError, _engine_error),
    (RequestValidationError, _validation_error),
    (ValidationError, _validation_error),
    (StarletteHTTPException, _http_error),
    (Exception, _unexpected),
]


def error_response(request: Request, exc: Exception) -> Response:
    """The response for ``exc``, as the installed handlers give it: for routes served outside
    FastAPI's exception middleware (app.api.fastpath)."""
    if isinstance(exc, _V2Failure):
        return _v2_failure(request, exc)
    for cls, handler in _HANDLERS:
        if isinstance(exc, cls):
            return handler(request, exc)
    return _unexpected(request, exc)  # pragma: no cover  (Exception is the last entry)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(_V2Failure, _v2_failure)
    for cls, handler in _HANDLERS:
        app.add_exception_handler(cls, handler)
