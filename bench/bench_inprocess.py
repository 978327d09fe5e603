"""The service's own cost per small request, with no HTTP: the whole app (middlewares,
pipeline, engine, device worker) driven in process by 64 concurrent coroutines.

Not a test. Run from the repository root:

    .venv/bin/python bench/bench_inprocess.py                 # inline launches on and off
    .venv/bin/python bench/bench_inprocess.py --requests 40000 --rounds 3

Each round starts the app (``create_app``, default settings but DYDC_DEVICE=cpu and the access
log off), waits until it is ready, sends ``--requests`` 16-sample ``linear`` sensitivities
requests untimed to warm it, then the same number timed: 64 coroutines calling the ASGI app
one request after another, every answer checked 200. It prints requests per second, the event
loop thread's CPU time per request (``time.thread_time``), and requests per launch
(dydc_batch_requests), for each DYDC_INLINE_LAUNCH_MS given, the settings taken in turn in
each round. uvicorn's own HTTP work (bench_load.py's five-line echo: about 100 us a request
here) comes on top of these figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
from prometheus_client import REGISTRY  # noqa: E402

from app.config import Settings  # noqa: E402
from app.main import create_app  # noqa: E402

BODY = orjson.dumps({"inputs": [0.5 + i for i in range(16)], "params": {"C": 1.5},
                     "wrt": ["C"]})
PATH = "/v1/routines/linear/sensitivities"
CONCURRENCY = 64


def _launches() -> float:
    return REGISTRY.get_sample_value("dydc_launches_total", {"device": "cpu"}) or 0.0


async def _one(app: object, k: int) -> int:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": PATH, "raw_path": PATH.encode(),
             "query_string": b"", "root_path": "", "state": {},
             "headers": [(b"host", b"bench"), (b"content-type", b"application/json"),
                         (b"content-length", b"%d" % len(BODY))],
             "client": ("127.0.0.1", 10_000 + k), "server": ("127.0.0.1", 80)}
    sent = False

    async def receive() -> dict[str, object]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": BODY, "more_body": False}
        await asyncio.Event().wait()  # the client stays connected
        raise AssertionError

    status: list[int] = []

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.start":
            status.append(int(message["status"]))  # type: ignore[call-overload]

    await app(scope, receive, send)  # type: ignore[operator]
    return status[0]


async def _round(inline_ms: float, requests: int) -> tuple[float, float, float]:
    app = create_app(Settings(device="cpu", access_log=False, inline_launch_ms=inline_ms))
    async with app.router.lifespan_context(app):
        while app.state.engine.readiness():
            await asyncio.sleep(0.05)
        left = [0]

        async def client(k: int) -> None:
            while left[0] > 0:
                left[0] -= 1
                status = await _one(app, k)
                assert status == 200, status

        for _warm_then_timed in range(2):
            left[0] = requests
            launches = _launches()
            began, cpu = time.perf_counter(), time.thread_time()
            await asyncio.gather(*(client(k) for k in range(CONCURRENCY)))
            seconds, cpu = time.perf_counter() - began, time.thread_time() - cpu
            launches = _launches() - launches
        return requests / seconds, cpu / requests * 1e6, requests / max(launches, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--inline-ms", default="1,0",
                        help="DYDC_INLINE_LAUNCH_MS values, comma-separated")
    args = parser.parse_args()
    os.environ.setdefault("DYDC_LOG_LEVEL", "warning")
    settings = [float(v) for v in args.inline_ms.split(",")]
    got: dict[float, list[tuple[float, float, float]]] = {v: [] for v in settings}
    for _ in range(args.rounds):
        for v in settings:
            got[v].append(asyncio.run(_round(v, args.requests)))
            rate, cpu, per = got[v][-1]
            print(f"DYDC_INLINE_LAUNCH_MS={v:g}: {rate:,.0f} req/s, event loop {cpu:.1f} us "
                  f"a request, {per:.1f} requests a launch", flush=True)
    print(f"\n`.venv/bin/python bench/bench_inprocess.py --requests {args.requests} "
          f"--rounds {args.rounds}`, medians:\n")
    print("| DYDC_INLINE_LAUNCH_MS | req/s | event loop us/request | requests/launch |")
    print("|--:|--:|--:|--:|")
    for v, rows in got.items():
        print(f"| {v:g} | {statistics.median(r[0] for r in rows):,.0f} | "
              f"{statistics.median(r[1] for r in rows):.1f} | "
              f"{statistics.median(r[2] for r in rows):.1f} |")


if __name__ == "__main__":
    main()
