"""``dydc bench``: a closed-loop load generator for the service, like Triton's perf_analyzer.

For each protocol (v1 JSON, v2 binary) and each concurrency C, C workers on one event loop
each send a request, wait for its answer and send the next, for a fixed duration, after a
short warm-up that is not counted. Bodies are encoded once, beforehand, by the client's own
codecs, so the loop only sends bytes and times answers. It reports throughput and the
p50/p90/p99 latency of the requests that completed within the duration.

Hand-written: perf_analyzer needs Triton's C++ client build, wrk and hey are other binaries
(and neither frames binary tensors); an asyncio loop over httpx is a few dozen lines and runs
wherever the client does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from dydc import v1, v2
from dydc.batches import make_batch
from dydc.calls import Call
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


async def _worker(client: httpx.AsyncClient, call: Call[Any], body: bytes, until: float,
                  record_from: float, latencies: list[float], errors: list[int]) -> None:
    request = call.request(client, body)
    while (start := time.perf_counter()) < until:
        try:
            response = await client.send(request)
            ok = response.status_code == 200
        except httpx.TransportError:
            ok = False
        end = time.perf_counter()
        if start >= record_from and end <= until:
            if ok:
                latencies.append(end - start)
            else:
                errors.append(1)


async def _point(url: str, headers: dict[str, str], call: Call[Any], protocol: str,
                 concurrency: int, duration: float, warmup: float) -> LoadPoint:
    body = b"".join(call.parts)
    latencies: list[float] = []
    errors: list[int] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits,
                                 timeout=max(60.0, duration * 2)) as client:
        now = time.perf_counter()
        record_from = now + warmup
        until = record_from + duration
        await asyncio.gather(*(_worker(client, call, body, until, record_from, latencies,
                                       errors) for _ in range(concurrency)))
    ms = np.asarray(latencies) * 1e3 if latencies else np.asarray([np.nan])
    p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
    return LoadPoint(protocol, concurrency, len(latencies), len(errors), duration, p50, p90, p99)


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
