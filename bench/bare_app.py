"""A bare FastAPI app for bench/bench_load.py: the framework's own limit.

Same route as the real service (``POST /v1/routines/{name}/sensitivities``), served by the
same stack (uvicorn with the same flags, FastAPI, orjson). It reads and parses the JSON body,
and writes a response of the same shape and about the same size as the real one (values and
one derivative array per parameter, full-precision floats), but runs no torch, no queue and
no worker thread: what is left is HTTP parsing, routing, JSON in and JSON out.

    .venv/bin/python -m uvicorn bench.bare_app:app --host 127.0.0.1 --port 8001 --no-access-log
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from fastapi import FastAPI, Request
from starlette.responses import Response

app = FastAPI(title="bare")

# the real routines' outputs, so that the bare answers carry the same keys
_OUTPUTS = {"linear": ["y"], "black_scholes_call": ["price"]}


@app.get("/readyz")
async def readyz() -> dict[str, str]:
    return {"status": "ready"}


@app.post("/v1/routines/{name}/sensitivities")
async def sensitivities(name: str, request: Request, strategy: str = "auto") -> Response:
    started = time.perf_counter()
    body: dict[str, Any] = orjson.loads(await request.body())
    inputs = body["inputs"]
    params: dict[str, float] = body.get("params", {})
    wrt = body.get("wrt") or list(params)
    # No compute: the first column scaled by a constant, only so that the numbers are
    # full-precision floats like the real ones (same response size).
    first = [(row[0] if isinstance(row, list) else row) * 1.0000001 for row in inputs]
    doc = {
        "routine": name,
        "strategy": "forward",
        "dtype": body.get("dtype", "float64"),
        "device": "cpu",
        "n": len(inputs),
        "params": params,
        "outputs": _OUTPUTS.get(name, ["y"]),
        "values": first,
        "derivatives": {p: first for p in wrt},
        "timing_ms": {"queue": 0.0, "compute": 0.0,
                      "total": round((time.perf_counter() - started) * 1e3, 3)},
    }
    return Response(orjson.dumps(doc), media_type="application/json")
