"""The five-line FastAPI echo of issue 20, for bench/bench_load.py's ``echo`` configuration:
the floor every small request is measured against (plus a /readyz for the benchmark to wait
on, matched after /echo).

    .venv/bin/python -m uvicorn bench.echo_app:app --log-level warning
"""

from fastapi import FastAPI, Request
from starlette.responses import Response

app = FastAPI()


@app.post("/echo")
async def echo(request: Request) -> Response:
    return Response(await request.body(), media_type="application/json")


@app.get("/readyz")
async def readyz() -> dict[str, str]:
    return {"status": "ready"}
