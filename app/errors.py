"""The one place where exceptions become HTTP responses: RFC 9457 problem details.

Each domain error has its status here, and nothing else in the service picks one. No
exception reaches the client as a traceback: anything unexpected is logged and answered 500
with a generic problem.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
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

__all__ = [
    "BodyTooLarge",
    "MalformedBody",
    "install_error_handlers",
    "problem_response",
    "status_for",
]

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class MalformedBody(InvalidRequest):
    """The body is not JSON, or not the JSON object the endpoint reads (HTTP 422)."""


class BodyTooLarge(RequestTooLarge):
    """The body is over DYDC_MAX_BODY_BYTES (HTTP 413), noticed before it is read in full."""


# (status, slug) per domain error; the most specific class wins.
_STATUS: list[tuple[type[EngineError], int, str]] = [
    (UnknownRoutine, 404, "unknown-routine"),
    (StrategyCapExceeded, 422, "strategy-cap-exceeded"),
    (RoutineFailed, 422, "routine-failed"),
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
    if isinstance(exc, EngineError):
        return _classify(exc)[0]
    if isinstance(exc, (RequestValidationError, ValidationError)):
        return 422
    if isinstance(exc, StarletteHTTPException):
        return exc.status_code
    return 500


def _engine_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, EngineError)
    status, slug = _classify(exc)
    headers = {"Retry-After": "1"} if status == 503 else None
    return problem_response(status, exc.message, slug, headers)


def _location(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc if p != "body") or "body"


def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, (RequestValidationError, ValidationError))
    errors = [
        {"loc": _location(tuple(e["loc"])), "msg": e["msg"]} for e in exc.errors()
    ]
    detail = "; ".join(f"{e['loc']}: {e['msg']}" for e in errors)
    return problem_response(422, detail, "invalid-request", errors=errors)


def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    if exc.status_code == 404:
        detail = f"no endpoint at {request.url.path}; see /docs for the API"
    elif exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}"
    return problem_response(exc.status_code, detail, headers=exc.headers)


def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem_response(500, "internal error; it has been logged", "internal-error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(EngineError, _engine_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
