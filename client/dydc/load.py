"""``dydc bench``: a closed-loop load generator for the service, like Triton's perf_analyzer.

For each protocol (v1 JSON, v2 binary) and each concurrency C, C workers on one event loop
each send a request, wait for its answer and send the next, for a fixed duration, after a
short warm-up that is not counted. Bodies are encoded once, beforehand, by the client's own
codecs, so the loop only sends bytes and times answers. It reports throughput and the
p50/p90/p99 latency of the requests that completed within the duration.

Hand-written: perf_analyzer needs Triton's C++ client build, wrk and hey are other binaries
(and neither frames binary tensors). The loop does not go through httpx: on this 2-core
machine an httpx.AsyncClient loop reached 60 req/s at concurrency 64 where wrk measured 812
against the same service, the client's own work per request (its connection pool, anyio)
competing with the service for the CPU. As wrk does, each worker keeps one connection and
resends one prepared request (built by httpx from the client's codecs), reading each answer
to its Content-Length: a few microseconds a request.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from dydc import v1, v2
from dydc.batches import make_batch
from dydc.calls import Call
from dydc.errors import error_from_response
from dydc.options import Kind, options
from dydc.results import RoutineInfo

__all__ = ["PROTOCOLS", "LoadPoint", "run_load"]

PROTOCOLS = ("json", "binary")


@dataclass(frozen=True)
class LoadPoint:
    protocol: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    first_error: str | None = None
    """Why the first failed request failed (the service's status and detail), if one did."""

    @property
    def throughput(self) -> float:
        """Completed requests per second."""
        return self.requests / self.seconds if self.seconds else 0.0


def sample_call(info: RoutineInfo, protocol: str, n: int, params: Mapping[str, Any],
                seed: int = 0) -> Call[Any]:
    """One request of n samples, inputs uniform in [0.5, 1.5] (valid for every built-in
    routine), every parameter differentiated."""
    rng = np.random.default_rng(seed)
    shape = (n,) if len(info.inputs) == 1 else (n, len(info.inputs))
    batch = make_batch(rng.uniform(0.5, 1.5, size=shape), params)
    opts = options(Kind.SENSITIVITIES)
    return v2.call(info, batch, opts) if protocol == "binary" else v1.call(info.name, batch,
                                                                          opts)


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection that sends a prepared request and waits for the
    status of its answer (read to its Content-Length)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._waiter: asyncio.Future[int] | None = None
        self._status = 0
        self._head = ""
        self._need: int | None = None
        self.error: httpx.Response | None = None
        """The last answer that was not a 200, kept to say why (a success is not kept)."""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._need is None:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self._buffer[:end]).decode("latin-1")
            length = _CONTENT_LENGTH.search(head)
            if length is None:  # not what this service sends: count it as an error
                self._fail(ConnectionError("an answer without Content-Length"))
                return
            self._status = int(head.split(" ", 2)[1])
            self._head = head
            self._need = end + 4 + int(length.group(1))
        if len(self._buffer) >= self._need:
            if self._status != 200:
                self.error = _answer(self._status, self._head,
                                     bytes(self._buffer[len(self._head) + 4:self._need]))
            del self._buffer[:self._need]
            self._need = None
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(self._status)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError("the service closed the connection"))

    def _fail(self, exc: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    async def exchange(self, request: bytes) -> int:
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self._waiter


_CONTENT_LENGTH = re.compile(r"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)


def _answer(status: int, head: str, body: bytes) -> httpx.Response:
    headers = [tuple(line.split(":", 1)) for line in head.split("\r\n")[1:] if ":" in line]
    return httpx.Response(status, headers=[(k.strip(), v.strip()) for k, v in headers],
                          content=body)


def _request_bytes(url: httpx.URL, call: Call[Any], headers: Mapping[str, str]) -> bytes:
    """The whole HTTP/1.1 request, encoded once (httpx builds it; the loop only resends it)."""
    request = httpx.Request(call.method, url.join(call.path), params=call.query or None,
                            headers={**headers, **call.headers},
                            content=b"".join(call.parts))
    target = request.url.raw_path.decode("ascii")
    lines = [f"{request.method} {target} HTTP/1.1"]
    lines += [f"{k}: {v}" for k, v in request.headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + request.content


async def _worker(url: httpx.URL, request: bytes, until: float, record_from: float,
                  latencies: list[float], errors: list[httpx.Response | str]) -> None:
    loop = asyncio.get_running_loop()
    connection: _Connection | None = None
    while (start := time.perf_counter()) < until:
        try:
            if connection is None or connection.transport is None or \
                    connection.transport.is_closing():
                _, connection = await loop.create_connection(
                    _Connection, url.host, url.port or (443 if url.scheme == "https" else 80),
                    ssl=url.scheme == "https" or None)
            ok = await connection.exchange(request) == 200
            why: httpx.Response | str = connection.error or ""
        except (OSError, ConnectionError) as exc:
            ok, connection, why = False, None, f"{type(exc).__name__}: {exc}"
        end = time.perf_counter()
        if start >= record_from and end <= until:
            if ok:
                latencies.append(end - start)
            else:
                errors.append(why)
    if connection is not None and connection.transport is not None:
        connection.transport.close()


def _why(error: httpx.Response | str) -> str:
    return str(error_from_response(error)) if isinstance(error, httpx.Response) else error


async def _point(url: str, headers: dict[str, str], call: Call[Any], protocol: str,
                 concurrency: int, duration: float, warmup: float) -> LoadPoint:
    target = httpx.URL(url)
    request = _request_bytes(target, call, headers)
    latencies: list[float] = []
    errors: list[httpx.Response | str] = []  # why each failed: an answer, or what happened
    record_from = time.perf_counter() + warmup
    until = record_from + duration
    await asyncio.gather(*(_worker(target, request, until, record_from, latencies, errors)
                           for _ in range(concurrency)))
    ms = np.asarray(latencies) * 1e3 if latencies else np.asarray([np.nan])
    p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
    return LoadPoint(protocol, concurrency, len(latencies), len(errors), duration, p50, p90, p99,
                     _why(errors[0]) if errors else None)


def run_load(url: str, info: RoutineInfo, *, n: int = 16,
             concurrency: Sequence[int] = (1, 8, 64), duration: float = 10.0,
             warmup: float = 1.0, protocols: Sequence[str] = PROTOCOLS,
             params: Mapping[str, Any] | None = None,
             api_key: str | None = None) -> list[LoadPoint]:
    """Every (protocol, concurrency) point in turn, against the service at ``url``."""
    headers = {"User-Agent": "dydc-bench"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    points = []
    for protocol in protocols:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol {protocol!r}; use {' or '.join(PROTOCOLS)}")
        call = sample_call(info, protocol, n, params or {})
        for c in concurrency:
            if c < 1:
                raise ValueError(f"concurrency {c}; use 1 or more")
            points.append(asyncio.run(_point(url.rstrip("/"), headers, call, protocol, c,
                                             duration, warmup)))
    return points
