"""What a call can raise, and how an error answer becomes one of them.

    DydcError
    ├── ApiError                 the service answered with an error status
    │   ├── InvalidRequest       400 (v2) / 422 (v1): the detail says what to change
    │   ├── NotFound             404: unknown routine (the detail lists the registered ones)
    │   ├── TooLarge             413: body or batch over the service's limits
    │   ├── Unauthorized         401: missing or wrong API key
    │   ├── Unavailable          503: queue full, draining, worker restarting (retried)
    │   └── DeadlineExceeded     504: still queued at its deadline (retried on request)
    └── ConnectionFailed         no answer at all, after the retries

Both error formats are read: v1's problem+json (RFC 9457: ``type``, ``title``, ``status``,
``detail``, ``instance``) and the Open Inference Protocol's ``{"error": "..."}``.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

import httpx

__all__ = [
    "ApiError",
    "ConnectionFailed",
    "DeadlineExceeded",
    "DydcError",
    "InvalidRequest",
    "NotFound",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
    "error_from_response",
]

REQUEST_ID_HEADER = "X-Request-ID"
_INSTANCE_PREFIX = "urn:dydc:request:"


class DydcError(Exception):
    """Everything this package raises on purpose."""


class ApiError(DydcError):
    """The service answered with an error status; ``detail`` says what to change."""

    def __init__(self, status: int, detail: str, *, title: str | None = None,
                 type: str = "about:blank", request_id: str | None = None) -> None:
        self.status = status
        self.title = title or _phrase(status)
        self.detail = detail
        self.type = type
        self.request_id = request_id
        super().__init__(f"{status} {self.title}: {detail}")


class InvalidRequest(ApiError):
    """HTTP 422 (v1) or 400 (v2): a request that cannot be computed as sent."""


class NotFound(ApiError):
    """HTTP 404: an unknown routine, model version or path."""


class TooLarge(ApiError):
    """HTTP 413: the body or the batch is over the service's limits."""


class Unauthorized(ApiError):
    """HTTP 401: the service wants an API key (``api_key=`` / ``DYDC_API_KEY``)."""


class Unavailable(ApiError):
    """HTTP 503: the queue is full, the service is draining or a worker restarts."""


class DeadlineExceeded(ApiError):
    """HTTP 504: the request was still queued when its deadline passed."""


class ConnectionFailed(DydcError):
    """No answer from the service (refused, reset, timed out), after every retry."""


_CLASSES: dict[int, type[ApiError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    404: NotFound,
    413: TooLarge,
    422: InvalidRequest,
    503: Unavailable,
    504: DeadlineExceeded,
}


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _document(response: httpx.Response) -> dict[str, Any]:
    try:
        doc = json.loads(response.content)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def error_from_response(response: httpx.Response) -> ApiError:
    """The :class:`ApiError` subclass for an error answer, from either error format."""
    doc = _document(response)
    detail = doc.get("detail", doc.get("error"))
    if not isinstance(detail, str) or not detail:
        text = response.text.strip()
        detail = text[:500] if text else _phrase(response.status_code)
    request_id = response.headers.get(REQUEST_ID_HEADER)
    instance = doc.get("instance")
    if request_id is None and isinstance(instance, str) and instance.startswith(
            _INSTANCE_PREFIX):
        request_id = instance.removeprefix(_INSTANCE_PREFIX)
    title = doc.get("title")
    kind = doc.get("type")
    cls = _CLASSES.get(response.status_code, ApiError)
    return cls(response.status_code, detail,
               title=title if isinstance(title, str) else None,
               type=kind if isinstance(kind, str) else "about:blank",
               request_id=request_id)
