"""Response compression: bytes and time per gzip level for large v1 and v2 answers.

Not a test. Run from the repository root:

    .venv/bin/python bench/bench_gzip.py

For N = 1e5 and 1e6 it asks the service in process (no network, DYDC_DEVICE=cpu) for
``linear`` sensitivities through v1 JSON and v2 JSON (inputs drawn uniformly in [0, 10),
float64, so the numbers have their full 17 digits), then compresses each body at gzip levels
1, 3, 6 and 9 the way Starlette's GZipMiddleware does (``gzip.GzipFile``), best of 3 timed runs
each. It also reports how long those bytes take on a 100 Mbit/s and a 1 Gbit/s link, which is
what compression buys. Writes bench/results/gzip.md and gzip.json; DYDC_GZIP_LEVEL's default
comes from this table.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import io
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from asgi_lifespan import LifespanManager

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.config import Settings  # noqa: E402
from app.main import create_app  # noqa: E402

RESULTS = ROOT / "bench" / "results"
LEVELS = (1, 3, 6, 9)
SIZES = (100_000, 1_000_000)
LINKS = {"100 Mbit/s": 100e6 / 8, "1 Gbit/s": 1e9 / 8}


def compress(body: bytes, level: int) -> bytes:
    """As starlette.middleware.gzip.GZipResponder does."""
    buffer = io.BytesIO()
    with gzip.GzipFile(mode="wb", fileobj=buffer, compresslevel=level) as f:
        f.write(body)
    return buffer.getvalue()


def best_of(body: bytes, level: int, repeats: int) -> tuple[int, float]:
    times = []
    size = 0
    for _ in range(repeats):
        started = time.perf_counter()
        size = len(compress(body, level))
        times.append(time.perf_counter() - started)
    return size, min(times)


async def bodies(sizes: tuple[int, ...]) -> dict[tuple[str, int], bytes]:
    app = create_app(Settings(device="cpu", warmup=False, compile=False,
                              max_body_bytes=512 * 2**20, access_log=False))
    out = {}
    rng = np.random.default_rng(0)
    async with LifespanManager(app, startup_timeout=60) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://dydc.bench",
                                     timeout=600) as client:
            for n in sizes:
                x = rng.uniform(0, 10, n).tolist()
                v1 = await client.post("/v1/routines/linear/sensitivities",
                                       json={"inputs": x, "params": {"C": 1.7}},
                                       headers={"accept-encoding": "identity"})
                v2 = await client.post("/v2/models/linear/infer", json={
                    "inputs": [{"name": "x", "datatype": "FP64", "shape": [n], "data": x}],
                    "parameters": {"C": 1.7}}, headers={"accept-encoding": "identity"})
                for name, r in (("v1 JSON", v1), ("v2 JSON", v2)):
                    r.raise_for_status()
                    out[(name, n)] = r.content
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    command = ".venv/bin/python bench/bench_gzip.py" + "".join(f" {a}" for a in sys.argv[1:])
    rows: list[dict[str, Any]] = []
    for (api, n), body in asyncio.run(bodies(SIZES)).items():
        raw_row = {"api": api, "n": n, "level": 0, "bytes": len(body), "compress_ms": 0.0}
        rows.append(raw_row)
        for level in LEVELS:
            size, seconds = best_of(body, level, args.repeats)
            rows.append({"api": api, "n": n, "level": level, "bytes": size,
                         "compress_ms": seconds * 1e3})
        for row in rows[-len(LEVELS) - 1:]:
            row["ratio"] = len(body) / row["bytes"]
            for link, rate in LINKS.items():
                row[f"total_ms {link}"] = row["compress_ms"] + row["bytes"] / rate * 1e3
            print(row, flush=True)
    header = ("| answer | N | level | bytes | ratio | compress ms | compress + send ms, "
              + " | compress + send ms, ".join(LINKS) + " |")
    lines = [header, "|---|--:|--:|--:|--:|--:|" + "--:|" * len(LINKS)]
    for r in rows:
        level = "none" if r["level"] == 0 else str(r["level"])
        sends = " | ".join(f"{r[f'total_ms {link}']:.0f}" for link in LINKS)
        lines.append(f"| {r['api']} | {r['n']:,} | {level} | {r['bytes']:,} | "
                     f"{r['ratio']:.2f} | {r['compress_ms']:.0f} | {sends} |")
    meta = {"when": time.strftime("%Y-%m-%d"),
            "machine": f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
                       "shared with other jobs (noisy)", "repeats": args.repeats}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gzip.json").write_text(json.dumps({"meta": meta, "command": command,
                                                   "rows": rows}, indent=1))
    (RESULTS / "gzip.md").write_text(
        "# Response compression: gzip levels\n\n"
        f"Command: `{command}`\n\n{meta['when']}, {meta['machine']}; best of "
        f"{args.repeats} per level; `linear` sensitivities (values and dy/dC), inputs uniform "
        "in [0, 10) as float64.\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
