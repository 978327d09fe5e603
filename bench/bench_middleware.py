"""What the operator's middlewares (app.http) cost per request, measured in process.

Not a test. Run from the repository root:

    .venv/bin/python bench/bench_middleware.py

Each configuration wraps the same trivial ASGI app (it reads the body and answers 800 bytes of
JSON, like a 16-sample ``linear`` answer) and drives it with the scope, headers and body of a
16-sample ``linear`` request, 20,000 times in a row on one event loop, best of 5 rounds: no
network, no server, so the figure is the middlewares' own CPU time per request, free of the
noise of a shared machine that a load test at concurrency 64 carries (bench_load.py measures
that too: ``--configs on,auth``). Compare with the time a request costs the service as a whole
(1 / req/s in bench/results/load.md). Writes bench/results/middleware.md.
"""

from __future__ import annotations

import asyncio
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from starlette.types import ASGIApp, Message, Receive, Scope, Send  # noqa: E402

from app.api.v2.routes import error_response  # noqa: E402
from app.config import Settings  # noqa: E402
from app.http.stack import wrap as wrap_with  # noqa: E402

RESULTS = ROOT / "bench" / "results"
KEY = "bench-key-6f1d0c2a9e7b4f35"
BODY = b'{"inputs":[' + b",".join(b"%.6f" % (0.5 + i) for i in range(16)) + \
    b'],"params":{"C":1.25},"wrt":["C"]}'
ANSWER = b"x" * 800
REQUESTS = 20_000
ROUNDS = 5


async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", b"%d" % len(ANSWER))]})
    await send({"type": "http.response.body", "body": ANSWER})


def scope() -> Scope:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": "/v1/routines/linear/sensitivities",
            "raw_path": b"/v1/routines/linear/sensitivities", "query_string": b"",
            "root_path": "", "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5000),
            "headers": [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json"),
                        (b"content-length", b"%d" % len(BODY)), (b"accept-encoding", b"gzip"),
                        (b"authorization", f"Bearer {KEY}".encode())]}


async def drive(app: ASGIApp) -> float:
    async def receive() -> Message:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: Message) -> None:
        pass

    started = time.perf_counter()
    for _ in range(REQUESTS):
        await app(scope(), receive, send)
    return (time.perf_counter() - started) / REQUESTS


def wrap(app: ASGIApp, settings: Settings) -> ASGIApp:
    """The service's stack, v2's error writer under /v2 as app.main hands it."""
    return wrap_with(app, settings, {"/v2": error_response})


CONFIGS: dict[str, Callable[[], ASGIApp]] = {
    "no middleware": lambda: endpoint,
    "stack, defaults (access log off)": lambda: wrap(endpoint, Settings(access_log=False)),
    "stack + API key": lambda: wrap(endpoint, Settings(access_log=False, api_keys=KEY)),
    "stack + API key + text access log": lambda: wrap(
        endpoint, Settings(api_keys=KEY)),
    "stack + API key + JSON access log": lambda: wrap(
        endpoint, Settings(api_keys=KEY, log_format="json")),
}


def main() -> None:
    import logging

    logger = logging.getLogger("dydc.access")  # lines formatted and handled, written nowhere
    logger.addHandler(logging.NullHandler())
    logger.setLevel(logging.INFO)
    logger.propagate = False
    results = {}
    for name, make in CONFIGS.items():
        app = make()
        asyncio.run(drive(app))  # warm
        results[name] = min(asyncio.run(drive(app)) for _ in range(ROUNDS))
        print(f"{name:40} {results[name] * 1e6:7.2f} µs/request", flush=True)
    base = results["no middleware"]
    lines = ["| configuration | µs per request | over no middleware, µs |", "|---|--:|--:|"]
    lines += [f"| {name} | {t * 1e6:.2f} | {(t - base) * 1e6:.2f} |"
              for name, t in results.items()]
    command = ".venv/bin/python bench/bench_middleware.py"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "middleware.md").write_text(
        "# The operator's middlewares: CPU time per request\n\n"
        f"Command: `{command}`\n\n{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}), shared with other jobs; "
        f"{REQUESTS:,} requests in a row, best of {ROUNDS} rounds; a 16-sample `linear` "
        "request with Accept-Encoding: gzip (the 800-byte answer stays under the gzip "
        "minimum) and a Bearer key. The access-log rows format each line but write nowhere.\n\n"
        + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
