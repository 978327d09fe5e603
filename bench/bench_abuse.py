"""Abuse benchmark: what an attacker on the same network does to everyone else.

Not a test. Run from the repository root:

    .venv/bin/python bench/bench_abuse.py            # about 3 minutes
    .venv/bin/python bench/bench_abuse.py --duration 10   # a quicker look

It starts the service as a real process (``python -m app`` on 127.0.0.1, a free port,
DYDC_DEVICE=cpu, default settings otherwise) and measures a *probe* (a 16-sample ``linear``
request, 2 a second, on its own connections) in four phases, in one run:

- ``quiet``: probes alone, the reference;
- ``heavy jobs``: two attackers send the heaviest jobs the strategies allow (O(N^2)
  strategies at their caps, ``logistic_rk4`` and ``softmax``), one after the other in a loop;
- ``large bodies``: 16 attackers each send a 60 MiB body of one-sample rows at once, in a
  loop; the server's resident memory is sampled;
- ``slow connections``: 500 connections each trickle a request's headers a byte at a time;
  the time until the server closes each is recorded;
- ``reserved budget`` (issue 25): 4 connections at a time each declare
  ``Content-Length: 67000000``, send one byte and wait to be cut at the read timeout, again
  and again, while 2 honest clients send 1.2 MB bodies in a loop;
- ``header flood`` (issue 25): 16 attackers send, in a loop, requests with a 1 MB header, with
  10,000 headers, or with a 60 KB ``Host``.

In every phase ``/healthz`` is timed every 100 ms from a process of its own, on a new
connection each time, as the kubelet's probe does.

Targets (issue 10): no probe 504 and probe p99 <= 1 s under heavy jobs, every attacker answer
200, 422 or 503; under large bodies /healthz <= 100 ms, probe p99 <= 1 s, memory <= 1 GiB over
idle; slow connections closed within DYDC_READ_TIMEOUT_S + 1 s, probes still served. Issue
25: under reserved budget and header floods, probe p99 <= 1 s, /healthz <= 100 ms, every
honest 1.2 MB body 200, every flood 431. Writes
bench/results/abuse.md, abuse.json and abuse.png (with matplotlib).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SENS = "/v1/routines/{}/sensitivities"
PROBE = {"inputs": [0.5 * i for i in range(16)], "params": {"C": -5.0}, "wrt": ["C"]}
READ_TIMEOUT_S = 10.0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _server() -> Iterator[tuple[str, int]]:
    port = _free_port()
    env = {**os.environ, "DYDC_DEVICE": "cpu", "DYDC_HOST": "127.0.0.1", "DYDC_PORT": str(port),
           "DYDC_LOG_LEVEL": "warning", "DYDC_READ_TIMEOUT_S": str(READ_TIMEOUT_S)}
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen([sys.executable, "-m", "app"], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"the server did not start:\n{log.read()}")
                time.sleep(0.2)
            yield url, proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass
class Phase:
    name: str
    seconds: float
    probes: list[float] = field(default_factory=list)  # latencies, s
    probe_statuses: Counter[int] = field(default_factory=Counter)
    attacker_statuses: Counter[str] = field(default_factory=Counter)
    health: list[float] = field(default_factory=list)  # /healthz latencies, s
    rss_idle: int = 0
    rss_peak: int = 0
    closed_after: list[float] = field(default_factory=list)  # slow connections, s

    def summary(self) -> dict[str, Any]:
        def pct(values: list[float], q: float) -> float | None:
            if not values:
                return None
            ordered = sorted(values)
            return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

        return {
            "phase": self.name,
            "probes": len(self.probes) + self.probe_statuses.get(-1, 0),
            "probe_statuses": dict(self.probe_statuses),
            "probe_p50_ms": _ms(pct(self.probes, 0.5)),
            "probe_p99_ms": _ms(pct(self.probes, 0.99)),
            "probe_max_ms": _ms(max(self.probes, default=None)),
            "attacker_statuses": dict(self.attacker_statuses),
            "health_max_ms": _ms(max(self.health, default=None)),
            "health_p99_ms": _ms(pct(self.health, 0.99)),
            "rss_over_idle_mib": (round((self.rss_peak - self.rss_idle) / 2**20)
                                  if self.rss_peak else None),
            "slow_closed": len(self.closed_after),
            "slow_closed_max_s": (round(max(self.closed_after), 2) if self.closed_after
                                  else None),
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 1)


async def _probes(url: str, phase: Phase, stop: asyncio.Event) -> None:
    """One probe every 0.5 s, each on its own task so that a slow one does not delay the
    next; a probe that gets no answer within 60 s counts as -1."""
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as c:
        async def one() -> None:
            began = time.perf_counter()
            try:
                r = await c.post(url + SENS.format("linear"), json=PROBE)
            except httpx.HTTPError:
                phase.probe_statuses[-1] += 1
                return
            phase.probe_statuses[r.status_code] += 1
            if r.status_code == 200:
                phase.probes.append(time.perf_counter() - began)

        tasks = []
        while not stop.is_set():
            tasks.append(asyncio.ensure_future(one()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
        await asyncio.gather(*tasks)


def _health_checks(url: str, seconds: float, out: Any) -> None:
    """/healthz every 100 ms for ``seconds``, as the kubelet probes it: in a process of its
    own (the probes' and the memory sampler's work in the benchmark's process would add to
    the times), a new connection each time; the latencies, s, put on ``out``."""
    import http.client

    host, port = url.removeprefix("http://").split(":")
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        began = time.perf_counter()
        try:
            connection = http.client.HTTPConnection(host, int(port), timeout=30)
            connection.request("GET", "/healthz")
            connection.getresponse().read()
            connection.close()
            times.append(time.perf_counter() - began)
        except OSError:
            pass
        time.sleep(0.1)
    out.put(times)


async def _memory(pid: int, phase: Phase, stop: asyncio.Event) -> None:
    phase.rss_idle = _rss_bytes(pid)
    while not stop.is_set():
        phase.rss_peak = max(phase.rss_peak, _rss_bytes(pid))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)


def _heavy_jobs() -> list[tuple[str, str, dict[str, Any]]]:
    rk4 = [[10.0, 0.01 * i] for i in range(4096)]
    scores = [[0.1 * i, 1.0, -0.5 * i] for i in range(4096)]
    return [
        ("logistic_rk4", "reverse-batched", {"inputs": rk4, "params": {"r": 0.3}}),
        ("softmax", "reverse-batched", {"inputs": scores, "params": {"T": 0.7}}),
        ("logistic_rk4", "reverse-loop", {"inputs": rk4[:1000], "params": {"r": 0.3}}),
        ("softmax", "jacrev", {"inputs": scores, "params": {"T": 0.7}}),
        # just under the cost limit: run in slices beside the probes
        ("logistic_rk4", "reverse-loop", {"inputs": rk4[:150], "params": {"r": 0.3}}),
        ("black_scholes_call", "reverse-loop",
         {"inputs": [[100.0, 95.0, 0.5]] * 1000, "params": {"sigma": 0.2}}),
    ]


async def _heavy_attacker(url: str, phase: Phase, stop: asyncio.Event, offset: int) -> None:
    jobs = _heavy_jobs()
    async with httpx.AsyncClient(timeout=600) as c:
        i = offset
        while not stop.is_set():
            routine, strategy, body = jobs[i % len(jobs)]
            i += 1
            try:
                r = await c.post(url + SENS.format(routine) + f"?strategy={strategy}", json=body)
                phase.attacker_statuses[f"{r.status_code} {routine} {strategy}"] += 1
            except httpx.HTTPError as exc:
                phase.attacker_statuses[f"error {type(exc).__name__}"] += 1


async def _body_attacker(url: str, phase: Phase, stop: asyncio.Event, body: bytes) -> None:
    async with httpx.AsyncClient(timeout=120) as c:
        while not stop.is_set():
            try:
                r = await c.post(url + SENS.format("linear"), content=body,
                                 headers={"content-type": "application/json"})
                phase.attacker_statuses[str(r.status_code)] += 1
            except httpx.HTTPError as exc:
                phase.attacker_statuses[f"error {type(exc).__name__}"] += 1


async def _slow_connection(url: str, phase: Phase, stop: asyncio.Event) -> None:
    host, port = url.removeprefix("http://").split(":")
    try:
        reader, writer = await asyncio.open_connection(host, int(port))
    except OSError:
        phase.attacker_statuses["refused"] += 1
        return
    opened = time.perf_counter()
    request = b"POST /v1/routines/linear/sensitivities HTTP/1.1\r\nHost: x\r\nX-Slow: "
    try:
        for i in range(10_000):
            if stop.is_set():
                break
            writer.write(request[i:i + 1] if i < len(request) else b"a")
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                if await asyncio.wait_for(reader.read(65536), 0.5) == b"":
                    phase.closed_after.append(time.perf_counter() - opened)
                    return
    except (ConnectionError, OSError):
        phase.closed_after.append(time.perf_counter() - opened)
        return
    finally:
        writer.close()
    phase.attacker_statuses["still open at the end"] += 1


_RESERVING = (b"POST /v1/routines/linear/sensitivities HTTP/1.1\r\nHost: x\r\n"
              b"Content-Type: application/json\r\nContent-Length: 67000000\r\n\r\n{")
_FLOODS = {
    "1 MB header": b"X-Big: " + b"a" * 2**20 + b"\r\n",
    "10000 headers": b"".join(b"X-%d: 1\r\n" % i for i in range(10_000)),
    "60 KB Host": b"Host: " + b"h" * 60_000 + b"\r\n",
}


async def _answer_of(url: str, request: bytes) -> str:
    """Send ``request`` on a connection of its own; the status line's code, once the server
    has closed it (or "reset")."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        with contextlib.suppress(ConnectionError):
            writer.write(request)
            await writer.drain()
        answer = b""
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                answer += chunk
    finally:
        writer.close()
    return answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/") else "reset"


async def _reserver(url: str, phase: Phase, stop: asyncio.Event) -> None:
    while not stop.is_set():
        phase.attacker_statuses[f"reserver {await _answer_of(url, _RESERVING)}"] += 1


async def _honest_bodies(url: str, phase: Phase, stop: asyncio.Event) -> None:
    body = json.dumps({"inputs": [0.123456789 * i for i in range(75_000)],
                       "params": {"C": 2.0}}).encode()
    assert len(body) > 1_200_000
    async with httpx.AsyncClient(timeout=120) as c:
        while not stop.is_set():
            r = await c.post(url + SENS.format("linear"), content=body,
                             headers={"content-type": "application/json"})
            phase.attacker_statuses[f"honest 1.2 MB {r.status_code}"] += 1


async def _flooder(url: str, phase: Phase, stop: asyncio.Event, offset: int) -> None:
    kinds = list(_FLOODS)
    i = offset
    while not stop.is_set():
        kind = kinds[i % len(kinds)]
        i += 1
        request = b"GET /v1/limits HTTP/1.1\r\n" + _FLOODS[kind] + b"Host: x\r\n\r\n"
        phase.attacker_statuses[f"{kind} {await _answer_of(url, request)}"] += 1


def _attack(name: str, url: str, seconds: float, out: Any) -> None:
    """The attackers of one phase, in a process of their own, so that their own work (60 MiB
    bodies, 500 sockets) does not delay the probes' measurement."""

    async def run() -> Phase:
        phase = Phase(name, seconds)
        stop = asyncio.Event()
        if name == "heavy jobs":
            tasks = [asyncio.ensure_future(_heavy_attacker(url, phase, stop, k))
                     for k in range(2)]
        elif name == "large bodies":
            body = _large_body()
            tasks = [asyncio.ensure_future(_body_attacker(url, phase, stop, body))
                     for _ in range(16)]
        elif name == "reserved budget":
            tasks = [asyncio.ensure_future(_reserver(url, phase, stop)) for _ in range(4)]
            await asyncio.sleep(0.5)  # the budget reserved before the honest bodies come
            tasks += [asyncio.ensure_future(_honest_bodies(url, phase, stop)) for _ in range(2)]
        elif name == "header flood":
            tasks = [asyncio.ensure_future(_flooder(url, phase, stop, k)) for k in range(16)]
        else:
            tasks = [asyncio.ensure_future(_slow_connection(url, phase, stop))
                     for _ in range(500)]
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.gather(*tasks)
        return phase

    phase = asyncio.run(run())
    out.put((dict(phase.attacker_statuses), phase.closed_after))


async def _phase(name: str, url: str, pid: int, seconds: float) -> Phase:
    import multiprocessing

    phase = Phase(name, seconds)
    stop = asyncio.Event()
    context = multiprocessing.get_context("spawn")
    attacker = None
    if name != "quiet":
        results = context.Queue()
        attacker = context.Process(target=_attack, args=(name, url, seconds, results))
        attacker.start()
    health_times = context.Queue()
    checker = context.Process(target=_health_checks, args=(url, seconds, health_times))
    checker.start()
    tasks = [asyncio.ensure_future(_probes(url, phase, stop)),
             asyncio.ensure_future(_memory(pid, phase, stop))]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*tasks)
    phase.health = await asyncio.to_thread(health_times.get, True, 600)
    checker.join()
    if attacker is not None:
        statuses, closed = await asyncio.to_thread(results.get, True, 600)
        attacker.join()
        phase.attacker_statuses.update(statuses)
        phase.closed_after = closed
    print(json.dumps(phase.summary()), flush=True)
    return phase


def _large_body() -> bytes:
    """60 MiB of one-sample rows: [[1],[1],...]."""
    rows = (60 * 2**20 - 32) // 4
    return b'{"inputs": [' + b"[1]," * (rows - 1) + b'[1]], "params": {"C": 1}}'


def _table(phases: list[dict[str, Any]]) -> str:
    head = ("| phase | probes | probe statuses | probe p50 ms | probe p99 ms | probe max ms "
            "| /healthz max ms | memory over idle MiB | attacker answers | slow conns closed "
            "(max s) |\n|---|--:|---|--:|--:|--:|--:|--:|---|---|\n")
    rows = []
    for p in phases:
        attackers = ", ".join(f"{k}: {v}" for k, v in sorted(p["attacker_statuses"].items()))
        slow = (f"{p['slow_closed']} ({p['slow_closed_max_s']})" if p["slow_closed"] else "-")
        rows.append(f"| {p['phase']} | {p['probes']} | {p['probe_statuses']} | "
                    f"{p['probe_p50_ms']} | {p['probe_p99_ms']} | {p['probe_max_ms']} | "
                    f"{p['health_max_ms']} | {p['rss_over_idle_mib']} | {attackers or '-'} | "
                    f"{slow} |")
    return head + "\n".join(rows) + "\n"


def _plot(phases: list[Phase], path: Path) -> None:
    from plots import pyplot  # (a script: bench/ is on its path)

    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.boxplot([[1e3 * x for x in p.probes] or [0] for p in phases], whis=(1, 99))
    ax.set_xticks(range(1, len(phases) + 1), [p.name for p in phases])
    ax.set_yscale("log")
    ax.set_ylabel("probe latency, ms (whiskers: p1-p99)")
    ax.axhline(1000, color="red", linestyle=":", label="target p99: 1 s")
    ax.set_title("16-sample linear probes, 2/s, under each attack")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


PHASES = ("quiet", "heavy jobs", "large bodies", "slow connections", "reserved budget",
          "header flood")


async def main_async(seconds: float, names: tuple[str, ...] = PHASES) -> None:
    phases: list[Phase] = []
    with _server() as (url, pid):
        for name in names:
            length = (max(seconds, READ_TIMEOUT_S + 5)
                      if name in ("slow connections", "reserved budget") else seconds)
            phases.append(await _phase(name, url, pid, length))
    summaries = [p.summary() for p in phases]
    if names != PHASES:  # a subset: printed, not written over the full run's results
        print(_table(summaries))
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "seconds": seconds,
            "read_timeout_s": READ_TIMEOUT_S}
    (RESULTS / "abuse.json").write_text(json.dumps({"meta": meta, "phases": summaries},
                                                   indent=1))
    quiet = statistics.median(phases[0].probes) if phases[0].probes else 0
    text = (f"# Abuse benchmark\n\n`.venv/bin/python bench/bench_abuse.py --duration {seconds:g}`"
            f" on {meta['machine']}; probe: 16-sample `linear`, 2/s; quiet probe median "
            f"{quiet * 1e3:.1f} ms.\n\n" + _table(summaries))
    (RESULTS / "abuse.md").write_text(text)
    _plot(phases, RESULTS / "abuse.png")
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per phase")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help="comma-separated subset of: " + ", ".join(PHASES))
    args = parser.parse_args()
    names = tuple(args.phases.split(","))
    unknown = set(names) - set(PHASES)
    if unknown:
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")
    asyncio.run(main_async(args.duration, names))


if __name__ == "__main__":
    main()
