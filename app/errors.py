"""The one place where exceptions become HTTP statuses.

:func:`problem_of` maps any exception to a :class:`ProblemDetails`: its status, a slug, the detail
that says what to change, and headers (``Retry-After`` on 503). Each protocol's codec then
writes the problem in its own format: v1 as RFC 9457 problem details
(:func:`problem_response`), v2 as the Open Inference Protocol's ``{"error": "..."}``
(``app.api.v2``), where what v1 answers 422 is 400, as that protocol says a failed request is
"typically 400" and its clients expect. No exception reaches the client as a traceback:
anything unexpected is logged with its traceback and answered 500 with a generic problem.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import Scope

from app import metrics
from app.context import instance_of
from app.engine.errors import (
    CostExceeded,
    DeadlineExceeded,
    EngineError,
    GraphBuilding,
    InvalidRequest,
    QueueFull,
    RequestTooLarge,
    RoutineFailed,
    ServiceUnavailable,
    StrategyCapExceeded,
    StrategyDisabled,
    UnknownRoutine,
)

__all__ = [
    "CLIENT_CLOSED_REQUEST",
    "PROBLEM_JSON",
    "BodiesInFlightFull",
    "BodyTooLarge",
    "MalformedBody",
    "MalformedFraming",
    "ProblemDetails",
    "ResponseTooLarge",
    "UnknownVersion",
    "Writer",
    "install_error_handlers",
    "json_bytes",
    "problem_body",
    "problem_of",
    "problem_response",
    "with_instance",
    "writer_for",
]

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
# nginx's status for a client that went away before its answer (metrics only: nobody reads it)
CLIENT_CLOSED_REQUEST = 499


class MalformedBody(InvalidRequest):
    """The body is not JSON, or not the JSON object the endpoint reads (HTTP 422)."""


class BodyTooLarge(RequestTooLarge):
    """The body is over DYDC_MAX_BODY_BYTES (HTTP 413), noticed before it is read or
    parsed in full."""


class MalformedFraming(MalformedBody):
    """v2 binary tensor data that does not add up: a JSON header length past the body, sizes
    that do not sum to the bytes sent, a shape that disagrees with its bytes (HTTP 400)."""


class UnknownVersion(EngineError):
    """v2: the model exists but not in the requested version (HTTP 404)."""


class ResponseTooLarge(InvalidRequest):
    """The answer, priced before the job runs (outputs x derivatives x N, in the encoding
    asked for), would be over DYDC_MAX_RESPONSE_BYTES (HTTP 422)."""


class BodiesInFlightFull(ServiceUnavailable):
    """The bodies being read or parsed at once hold DYDC_MAX_INFLIGHT_BODY_BYTES already
    (HTTP 503 + Retry-After): refused before a byte of this one is read."""


# (status, slug, reason) per domain error; the most specific class wins. A reason counts the
# refusal in dydc_rejections_total here (the engine counts its own: queue_full, deadline,
# shutdown, cost).
_STATUS: list[tuple[type[EngineError], int, str, str | None]] = [
    (UnknownRoutine, 404, "unknown-routine", None),
    (UnknownVersion, 404, "unknown-version", None),
    (StrategyCapExceeded, 422, "strategy-cap-exceeded", "strategy_cap"),
    (StrategyDisabled, 422, "strategy-disabled", "strategy_disabled"),
    (CostExceeded, 422, "cost-exceeded", None),
    (ResponseTooLarge, 422, "response-too-large", "response_bytes"),
    (RoutineFailed, 422, "routine-failed", None),
    (MalformedFraming, 422, "malformed-framing", None),
    (MalformedBody, 422, "malformed-body", None),
    (InvalidRequest, 422, "invalid-request", None),
    (BodyTooLarge, 413, "body-too-large", "body_size"),
    (RequestTooLarge, 413, "batch-too-large", "samples"),
    (DeadlineExceeded, 504, "deadline-exceeded", None),
    (QueueFull, 503, "queue-full", None),
    (GraphBuilding, 503, "compiled-graph-building", None),
    (BodiesInFlightFull, 503, "bodies-in-flight-full", "body_bytes"),
    (ServiceUnavailable, 503, "service-unavailable", None),
]
# Validation errors a problem lists at most (a list of 10,000 wrong items is 10,000 errors).
_ERRORS_AT_MOST = 10


@dataclass(frozen=True)
class ProblemDetails:
    """What went wrong, before any protocol writes it (RFC 9457's problem details; not the
    engine's differentiation ``Problem``)."""

    status: int
    detail: str
    slug: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # v1 problem members (``errors``)

    def __post_init__(self) -> None:
        object.__setattr__(self, "detail", capped(self.detail))


# What a problem's detail may hold: a message quotes what the request named (a wrt entry, a
# parameter, a dtype, a strategy), and one name of a megabyte had come back whole, a body of
# 64 MiB making an error as large. Our own words are a few hundred characters.
DETAIL_AT_MOST = 2048


def capped(text: str, at_most: int = DETAIL_AT_MOST) -> str:
    """``text``, or its beginning and its end (where a message says what to change) with the
    middle left out and counted."""
    if len(text) <= at_most:
        return text
    head, tail = at_most * 2 // 3, at_most // 3
    return f"{text[:head]} ... ({len(text) - head - tail} characters left out) ... {text[-tail:]}"


def _location(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc if p != "body") or "body"


def _retry_after(exc: EngineError) -> dict[str, str]:
    seconds = exc.retry_after_s if isinstance(exc, (QueueFull, GraphBuilding)) else 1.0
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def problem_of(exc: BaseException, method: str = "", path: str = "") -> ProblemDetails:
    """The problem ``exc`` is answered with; ``method`` and ``path`` only word a 404 or 405.
    Logs what was not expected, with its traceback."""
    if isinstance(exc, EngineError):
        for cls, status, slug, reason in _STATUS:
            if isinstance(exc, cls):
                if reason is not None:
                    metrics.child(metrics.REJECTIONS, reason).inc()
                headers = _retry_after(exc) if status == 503 else {}
                return ProblemDetails(status, exc.message, slug, headers)
    if isinstance(exc, (RequestValidationError, ValidationError)):
        found = exc.errors()
        errors = [{"loc": capped(_location(tuple(e["loc"])), 256), "msg": capped(e["msg"], 512)}
                  for e in found[:_ERRORS_AT_MOST]]
        detail = "; ".join(f"{e['loc']}: {e['msg']}" for e in errors)
        if len(found) > len(errors):
            detail += f" ... and {len(found) - len(errors)} more errors"
        return ProblemDetails(422, detail, "invalid-request", extra={"errors": errors})
    if isinstance(exc, StarletteHTTPException):
        detail = (exc.detail if isinstance(exc.detail, str)
                  else HTTPStatus(exc.status_code).phrase)
        if exc.status_code == 404:
            detail = f"no endpoint at {path}; see /docs for the API"
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            allowed = [m.strip() for m in headers.get("Allow", "").split(",") if m.strip()]
            if "GET" in allowed and "HEAD" not in allowed:  # every GET answers HEAD (app.api)
                allowed.insert(allowed.index("GET") + 1, "HEAD")
                headers["Allow"] = ", ".join(allowed)
            detail = f"{method} is not allowed on {path}" + (
                f"; use {' or '.join(allowed)}" if allowed else "")
        return ProblemDetails(exc.status_code, detail, headers=headers)
    if isinstance(exc, ClientDisconnect):
        return ProblemDetails(CLIENT_CLOSED_REQUEST, "the client went away")
    log.error("unhandled error on %s %s", method, path, exc_info=exc)
    return ProblemDetails(500, "internal error; it has been logged", "internal-error")


def with_instance(problem: ProblemDetails, scope: Scope) -> ProblemDetails:
    """The problem with its request's id as ``instance`` (app.http.request_id), if any."""
    instance = instance_of(scope)
    if instance is None:
        return problem
    return replace(problem, extra={**problem.extra, "instance": instance})


def json_bytes(document: Any) -> bytes:
    """``document`` as JSON (numpy arrays as lists). A string from a request may hold a lone
    surrogate (JSON's "\\ud800" decodes to one), which UTF-8 cannot carry and orjson refuses:
    it is then written escaped, as the client sent it (an echoed id or name had been a 500)."""
    try:
        return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    except orjson.JSONEncodeError:
        return json.dumps(document, default=_plain, separators=(",", ":")).encode("ascii")


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):  # a numpy array or number
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON")


def problem_body(problem: ProblemDetails) -> bytes:
    """A problem as RFC 9457 problem details (v1, health, everything but v2)."""
    return json_bytes({
        "type": f"urn:dydc:problem:{problem.slug}" if problem.slug else "about:blank",
        "title": HTTPStatus(problem.status).phrase,
        "status": problem.status,
        "detail": problem.detail,
        **problem.extra,
    })


def problem_response(problem: ProblemDetails) -> Response:
    return Response(problem_body(problem), status_code=problem.status, media_type=PROBLEM_JSON,
                    headers=problem.headers or None)


# -- FastAPI's exception handlers ----------------------------------------------------------

Writer = Callable[[ProblemDetails], Response]


def writer_for(path: str, mounts: Mapping[str, Writer]) -> Writer:
    """The writer of the API whose prefix (a key of ``mounts``) ``path`` is under; problem
    details for every other path."""
    for prefix, write in mounts.items():
        if path == prefix or path.startswith(prefix + "/"):
            return write
    return problem_response


def install_error_handlers(app: FastAPI, mounts: Mapping[str, Writer] | None = None) -> None:
    """Answer what FastAPI's own routes raise, and FastAPI's 404 and 405, as problem details;
    under each prefix of ``mounts`` (a path no route matched has no protocol but the API its
    prefix mounts) with that API's writer instead. Routes that own a format (v2's) answer
    their own errors before these handlers see them."""
    prefixes = dict(mounts or {})

    def handler(request: Request, exc: Exception) -> Response:
        path = request.url.path
        problem = with_instance(problem_of(exc, request.method, path), request.scope)
        return writer_for(path, prefixes)(problem)

    for cls in (EngineError, RequestValidationError, ValidationError, StarletteHTTPException,
                Exception):
        app.add_exception_handler(cls, handler)
