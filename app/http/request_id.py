"""``X-Request-ID``: taken from the request when it is 1-128 visible ASCII characters,
generated otherwise (32 random hex digits, as a UUID4's), and echoed on every answer, errors and
refusals by the other middlewares included. An invalid id is replaced, not refused: a
tracing header must never cost a client its answer."""

from __future__ import annotations

import os
import random
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.context import RequestRecord, publish, withdraw

__all__ = ["HEADER", "MAX_LENGTH", "RequestIdMiddleware", "accepted_id"]

HEADER = b"x-request-id"
MAX_LENGTH = 128
_VISIBLE_ASCII = re.compile(rb"[\x21-\x7e]{1,%d}" % MAX_LENGTH)
# Ids name requests, they guard nothing: a generator seeded from os.urandom (reseeded in a
# forked child) instead of a system call per request, which also let the device worker take
# the interpreter's lock in the middle of every request
_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)


def accepted_id(given: bytes | None) -> str:
    """``given`` when it is a valid id, else a new one."""
    if given is not None and _VISIBLE_ASCII.fullmatch(given):
        return given.decode("ascii")
    return f"{_ids.getrandbits(128):032x}"


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == HEADER), None)
        record = RequestRecord(accepted_id(given))
        echo = (HEADER, record.id.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), echo]
            await send(message)

        token = publish(scope, record)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            withdraw(token)
