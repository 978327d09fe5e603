"""What one request was: its id, and the fields the route learns as it runs (routine,
strategy, n, queue and compute times), for the access log and for error bodies.

The request-id middleware opens a :class:`RequestRecord` per request and publishes it twice:
in the ASGI scope's ``state`` dict (``scope["state"]["dydc.record"]``), for code that has the
scope, and in a context variable, for code that has not (the routes' metrics context fills it
through :func:`current_record`). Both hold the same mutable object, so what the route writes
the middleware reads after the route returns, even across tasks that copy the context.

It lives beside app.http and app.api rather than in either: the HTTP middlewares open and read
the record, the API's routes and metrics fill it, and neither layer imports the other.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

from starlette.types import Scope

__all__ = ["STATE_KEY", "RequestRecord", "current_record", "instance_of", "record_of"]

STATE_KEY = "dydc.record"


@dataclass
class RequestRecord:
    id: str
    routine: str | None = None
    strategy: str | None = None
    n: int | None = None
    queue_ms: float | None = None
    compute_ms: float | None = None
    # the status of a request the application never answered: 408 written by the server at
    # the read timeout (app.server), 499 when the client went away (the pipeline)
    closed_with: int | None = None
    closed_bytes: int = 0  # the body of that 408, as written by the server

    @property
    def instance(self) -> str:
        """The problem+json ``instance`` of an error answered to this request."""
        return f"urn:dydc:request:{self.id}"


_CURRENT: ContextVar[RequestRecord | None] = ContextVar("dydc_request_record", default=None)


def current_record() -> RequestRecord | None:
    return _CURRENT.get()


def record_of(scope: Scope) -> RequestRecord | None:
    state = scope.get("state")
    record = state.get(STATE_KEY) if isinstance(state, dict) else None
    return record if isinstance(record, RequestRecord) else None


def instance_of(scope: Scope) -> str | None:
    record = record_of(scope)
    return record.instance if record is not None else None


def publish(scope: Scope, record: RequestRecord) -> object:
    """Make ``record`` this request's (scope and context); returns the context token."""
    scope.setdefault("state", {})[STATE_KEY] = record
    return _CURRENT.set(record)


def withdraw(token: object) -> None:
    _CURRENT.reset(token)  # type: ignore[arg-type]
