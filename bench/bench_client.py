"""Client benchmark: what ``dydc.Client`` costs over a raw httpx call, where ``protocol="auto"``
should switch from JSON to binary, and ``dydc bench`` against wrk.

Not a test. Run from the repository root (``apt-get install wrk`` for the last part):

    .venv/bin/python bench/bench_client.py

It starts the service as a uvicorn subprocess on 127.0.0.1 (DYDC_DEVICE=cpu, warm-up on) and
measures, each point the median of interleaved rounds after an untimed warm-up call:

1. the crossover: ``Client(protocol="json")`` against ``Client(protocol="binary")``, one
   ``sensitivities`` call at N = 64 ... 65,536, for ``linear`` (D = 1) and
   ``black_scholes_call`` (D = 3, two derivatives);
2. the overhead at N = 1e6 (``exponential_decay``, D = 2): the client against the raw httpx
   call a caller would write (encode, post, decode into numpy), per protocol;
3. ``dydc bench`` (its load loop, dydc.load) against wrk at concurrency 64, the same body
   (``linear``, 16 samples), alternating, 5 s a run.

Writes bench/results/client.md and client.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dydc
import httpx
import numpy as np
from dydc.load import run_load

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CROSSOVER_N = (64, 256, 512, 1024, 2048, 4096, 16384)


@contextmanager
def service() -> Iterator[str]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "DYDC_DEVICE": "cpu", "DYDC_LOG_LEVEL": "warning"}
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "app.main:app", "--host",
                            "127.0.0.1", "--port", str(port), "--log-level", "warning",
                            "--no-access-log"], cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("the service did not become ready")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def median_ms(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Each function once untimed, then ``rounds`` interleaved timed rounds."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def samples(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).uniform(0.5, 1.5, size=(n, d))
    return x[:, 0].copy() if d == 1 else x


def crossover(url: str, rounds: int) -> list[dict[str, Any]]:
    rows = []
    cases = [("linear", 1, {"C": 2.0}), ("black_scholes_call", 3, {"sigma": 0.2, "r": 0.05})]
    with dydc.Client(url, protocol="json") as as_json, \
            dydc.Client(url, protocol="binary") as as_binary:
        for routine, d, params in cases:
            for n in CROSSOVER_N:
                x = samples(n, d)
                t = median_ms({
                    "json": lambda x=x, r=routine, p=params: as_json.sensitivities(r, x, p),
                    "binary": lambda x=x, r=routine, p=params: as_binary.sensitivities(r, x, p),
                }, rounds)
                rows.append({"routine": routine, "n": n, **t})
                print(f"crossover {routine} N={n}: {t}", flush=True)
    return rows


def overhead(url: str, rounds: int) -> dict[str, float]:
    n = 1_000_000
    x = samples(n, 2, seed=3)
    params = {"k": 0.7}
    http = httpx.Client(base_url=url, timeout=300)
    header = json.dumps({"inputs": [{"name": "x", "datatype": "FP64", "shape": [n, 2],
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "parameters": {**params, "binary_data_output": True}}).encode()

    def raw_json() -> None:
        body = json.dumps({"inputs": x.tolist(), "params": params})
        doc = http.post("/v1/routines/exponential_decay/sensitivities", content=body,
                        headers={"Content-Type": "application/json"}).json()
        np.asarray(doc["values"]), np.asarray(doc["derivatives"]["k"])

    def raw_binary() -> None:
        r = http.post("/v2/models/exponential_decay/infer", content=header + x.tobytes(),
                      headers={"Inference-Header-Content-Length": str(len(header)),
                               "Content-Type": "application/octet-stream"})
        length = int(r.headers["Inference-Header-Content-Length"])
        doc = json.loads(r.content[:length])
        offset = length
        for out in doc["outputs"]:
            size = out["parameters"]["binary_data_size"]
            np.frombuffer(r.content, "<f8", size // 8, offset)
            offset += size

    with dydc.Client(url, protocol="json", timeout=300) as as_json, \
            dydc.Client(url, protocol="binary", timeout=300) as as_binary:
        t = median_ms({
            "raw httpx v1 JSON": raw_json,
            "Client(protocol='json')": lambda: as_json.sensitivities("exponential_decay", x,
                                                                      params),
            "raw httpx v2 binary": raw_binary,
            "Client(protocol='binary')": lambda: as_binary.sensitivities("exponential_decay",
                                                                          x, params),
        }, rounds)
    http.close()
    print(f"overhead at 1e6: {t}", flush=True)
    return t


WRK_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '%s'
"""


def load_against_wrk(url: str, seconds: float, runs: int) -> dict[str, list[float]]:
    if shutil.which("wrk") is None:
        print("wrk not found (apt-get install wrk): skipping the load comparison")
        return {}
    with dydc.Client(url) as client:
        info = client.routine("linear")
    x = samples(16, 1, seed=5)
    body = json.dumps({"inputs": x.tolist(), "params": {"C": 1.5}})
    out: dict[str, list[float]] = {"dydc bench": [], "wrk": []}
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_LUA % body)
    try:
        for _ in range(runs):
            point = run_load(url, info, n=16, concurrency=[64], duration=seconds, warmup=1.0,
                             protocols=["json"], params={"C": 1.5})[0]
            out["dydc bench"].append(point.throughput)
            result = subprocess.run(["wrk", "-t2", "-c64", f"-d{seconds:g}s", "-s",
                                     script.name, f"{url}/v1/routines/linear/sensitivities"],
                                    capture_output=True, text=True, check=True)
            rps = float(re.search(r"Requests/sec:\s+([\d.]+)", result.stdout).group(1))  # type: ignore[union-attr]
            out["wrk"].append(rps)
            print(f"load c=64: dydc bench {point.throughput:.0f} req/s, wrk {rps:.0f} req/s",
                  flush=True)
    finally:
        os.unlink(script.name)
    return out


def write(crossover_rows: list[dict[str, Any]], overhead_ms: dict[str, float],
          load: dict[str, list[float]]) -> None:
    lines = ["# Client benchmark", "", "`.venv/bin/python bench/bench_client.py`; medians in ms.",
             "", "## JSON against binary, one sensitivities call", "",
             "| routine | N | Client(json) | Client(binary) | binary / json |",
             "|---|--:|--:|--:|--:|"]
    for r in crossover_rows:
        lines.append(f"| {r['routine']} | {r['n']:,} | {r['json']:.2f} | {r['binary']:.2f} | "
                     f"{r['binary'] / r['json']:.2f} |")
    lines += ["", "## At N = 1e6 (exponential_decay), the client against raw httpx", "",
              "| call | ms |", "|---|--:|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in overhead_ms.items()]
    if overhead_ms:
        j = overhead_ms["Client(protocol='json')"] / overhead_ms["raw httpx v1 JSON"]
        b = overhead_ms["Client(protocol='binary')"] / overhead_ms["raw httpx v2 binary"]
        lines += ["", f"Client/raw: JSON {j:.2f}x, binary {b:.2f}x (target at most 1.2x)."]
    if load:
        lines += ["", "## dydc bench against wrk, linear, 16 samples, concurrency 64", "",
                  "| run | dydc bench req/s | wrk req/s | ratio |", "|--:|--:|--:|--:|"]
        for i, (a, w) in enumerate(zip(load["dydc bench"], load["wrk"], strict=True)):
            lines.append(f"| {i + 1} | {a:,.0f} | {w:,.0f} | {a / w:.2f} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "client.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "client.json").write_text(json.dumps(
        {"crossover": crossover_rows, "overhead_ms": overhead_ms, "load": load}, indent=1))
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--load-seconds", type=float, default=5.0)
    parser.add_argument("--load-runs", type=int, default=2)
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["crossover", "overhead", "load"])
    args = parser.parse_args()
    with service() as url:
        rows = [] if "crossover" in args.skip else crossover(url, args.rounds)
        over = {} if "overhead" in args.skip else overhead(url, max(3, args.rounds // 2))
        load = {} if "load" in args.skip else load_against_wrk(url, args.load_seconds,
                                                              args.load_runs)
    write(rows, over, load)


if __name__ == "__main__":
    main()
