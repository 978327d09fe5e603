"""Wire benchmark: what JSON and binary tensors cost end to end, beside their floor.

Not a test. Run from the repository root (``pip install -e '.[bench]'`` for the plot):

    .venv/bin/python bench/bench_wire.py            # N = 1e4, 1e5, 1e6; writes bench/results/wire.*
    .venv/bin/python bench/bench_wire.py --codings  # the same with each client's default
                                                    # Accept-Encoding: results/wire_codings.*

For N = 1e4, 1e5 and 1e6 samples of ``damped_oscillator`` (two parameters, so a response holds
three arrays of N: y, dy/dgamma, dy/domega) it times, through real uvicorn servers on
127.0.0.1 (``--no-access-log``, DYDC_DEVICE=cpu), one request at a time on a kept-alive
connection, from the first byte sent to the last byte of the response received:

- ``v1 JSON``: POST /v1/routines/damped_oscillator/sensitivities?strategy=forward;
- ``v2 JSON``: POST /v2/models/damped_oscillator/infer, tensors as JSON data;
- ``v2 binary``: the same with the input and all outputs as binary tensor data;
- ``bare ...``: a bare ASGI endpoint (this file's ``bare``, no framework) per wire format, in
  its own uvicorn: it parses the same request the same way a careful implementation would
  (orjson, then one numpy array; or a buffer view of the binary part) and writes a response
  of the same size, without compute. No implementation of the protocol can beat it;
- ``compute``: the device worker's time for the request (the service's own
  ``timing_ms.compute`` of the v1 requests): values and both derivatives, forward mode.

Before the first N of DYDC_COMPILE_MIN_SAMPLES or more, the routine's compiled graph is
waited for (``until_graph``), so that every repetition there runs as a warm service does.
Every point is the median of several repetitions, interleaved across variants (the machine
is shared). It also times the v1 ``inputs`` parse alone at N = 1e6: the general path
(orjson, type scan, numpy), the fast path of app/api/decoding.py, and numpy's text parser.
Writes bench/results/wire.md, wire.json and wire.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
ROUTINE = "damped_oscillator"
PARAMS = {"gamma": 0.1, "omega": 1.0}
HEADER = "Inference-Header-Content-Length"
SIZES = (10_000, 100_000, 1_000_000)
COMPILE_MIN_SAMPLES = 65_536  # the service's default DYDC_COMPILE_MIN_SAMPLES
WIRE_TARGET = 1.2  # at most this times (a bare endpoint moving the same bytes + compute)


# -- the bare endpoint: the floor ----------------------------------------------------------------

async def _body(receive: Callable[[], Any]) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def _bare_v1_json(body: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    doc = orjson.loads(body)
    t = np.array(doc["inputs"], dtype=np.float64)
    y = t * 1.0000001  # full-precision floats, as the real ones: same response size
    out = {"routine": ROUTINE, "strategy": "forward", "dtype": "float64", "device": "cpu",
           "n": len(t), "params": doc["params"], "outputs": ["y"], "values": y,
           "derivatives": {p: y for p in doc["wrt"]},
           "timing_ms": {"queue": 0.0, "compute": 0.0, "total": 0.0}}
    return orjson.dumps(out, option=orjson.OPT_SERIALIZE_NUMPY), []


def _bare_v2_json(body: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    doc = orjson.loads(body)
    t = np.array(doc["inputs"][0]["data"], dtype=np.float64)
    y = t * 1.0000001
    outputs = [{"name": name, "datatype": "FP64", "shape": [len(t)], "data": y}
               for name in ("y", "dy_dgamma", "dy_domega")]
    out = {"model_name": ROUTINE, "model_version": "1", "parameters": {"device": "cpu",
           "strategy": "forward"}, "outputs": outputs}
    return orjson.dumps(out, option=orjson.OPT_SERIALIZE_NUMPY), []


def _bare_v2_binary(body: bytes, length: int) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    doc = orjson.loads(body[:length])
    t = np.frombuffer(body, dtype="<f8", offset=length,
                      count=doc["inputs"][0]["parameters"]["binary_data_size"] // 8)
    y = t * 1.0000001
    outputs = [{"name": name, "datatype": "FP64", "shape": [len(t)],
                "parameters": {"binary_data_size": y.nbytes}}
               for name in ("y", "dy_dgamma", "dy_domega")]
    head = orjson.dumps({"model_name": ROUTINE, "model_version": "1",
                         "parameters": {"device": "cpu", "strategy": "forward"},
                         "outputs": outputs})
    return b"".join([head, y.data, y.data, y.data]), [(HEADER.lower().encode(),
                                                       str(len(head)).encode())]


async def bare(scope: dict[str, Any], receive: Callable[[], Any],
               send: Callable[[dict[str, Any]], Any]) -> None:
    """A raw ASGI app: /readyz, and one POST endpoint per wire format."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    path = scope["path"]
    if path == "/readyz":
        body, extra = b'{"status":"ready"}', []
    else:
        raw = await _body(receive)
        if path == "/v1json":
            body, extra = _bare_v1_json(raw)
        elif path == "/v2json":
            body, extra = _bare_v2_json(raw)
        else:
            length = int(dict(scope["headers"])[HEADER.lower().encode()])
            body, extra = _bare_v2_binary(raw, length)
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        *extra]})
    await send({"type": "http.response.body", "body": body})


# -- requests ------------------------------------------------------------------------------------

def v1_json(t: np.ndarray) -> tuple[bytes, dict[str, str]]:
    body = {"inputs": t, "params": PARAMS, "wrt": list(PARAMS)}
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), {
        "content-type": "application/json"}


def v2_json(t: np.ndarray) -> tuple[bytes, dict[str, str]]:
    body = {"inputs": [{"name": "t", "datatype": "FP64", "shape": [len(t)], "data": t}],
            "parameters": {**PARAMS, "strategy": "forward"}}
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), {
        "content-type": "application/json"}


def v2_binary(t: np.ndarray) -> tuple[bytes, dict[str, str]]:
    head = orjson.dumps({
        "inputs": [{"name": "t", "datatype": "FP64", "shape": [len(t)],
                    "parameters": {"binary_data_size": t.nbytes}}],
        "parameters": {**PARAMS, "strategy": "forward", "binary_data_output": True}})
    return head + t.astype("<f8").tobytes(), {"content-type": "application/octet-stream",
                                              HEADER: str(len(head))}


# -- servers -------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve(app: str, env: dict[str, str] | None = None) -> Iterator[str]:
    import httpx

    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
         "--no-access-log", "--log-level", "warning"],
        cwd=ROOT, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"{app} exited with {proc.returncode}")
            time.sleep(0.2)
        else:
            raise RuntimeError(f"{app} did not become ready")
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


# -- measuring -----------------------------------------------------------------------------------

def _metric(text: str, name: str, label: str | None = None) -> float:
    """The sum of a counter's samples in /metrics text, those with ``label`` if given."""
    total = 0.0
    for match in re.finditer(rf"^{name}(\{{[^}}]*\}})? (\S+)$", text, re.MULTILINE):
        if label is None or (match.group(1) and label in match.group(1)):
            total += float(match.group(2))
    return total


def graphs_and_refusals(client: Any, url: str, routine: str) -> tuple[float, float]:
    """The routine's compiled graphs loaded so far, and the service's build refusals."""
    text = client.get(url + "/metrics").text
    return (
        _metric(text, "dydc_compiled_graphs_total", f'routine="{routine}"'),
        _metric(text, "dydc_compile_refusals_total"),
    )


def until_graph(client: Any, service: str, body: bytes, timeout_s: float = 600.0) -> None:
    """Before the first N that a compiled graph serves (DYDC_COMPILE_MIN_SAMPLES and more):
    the v1 request once, which asks for its kind's graph (or finds it in the cache directory),
    then /metrics until it is loaded, then the request again (its first launch through the
    graph). Without this the repetitions at that N ran eagerly until the build finished and
    compiled after, and the v1 requests' compute, the floor's other term, was mostly eager."""
    url = f"{service}/v1/routines/{ROUTINE}/sensitivities?strategy=forward"
    headers = {"content-type": "application/json", "Accept-Encoding": "identity"}
    before, refused = graphs_and_refusals(client, service, ROUTINE)
    if before == 0:
        client.post(url, content=body, headers=headers).raise_for_status()
        deadline = time.monotonic() + timeout_s
        while graphs_and_refusals(client, service, ROUTINE) == (0, refused):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{ROUTINE}: no graph loaded after {timeout_s:.0f} s")
            time.sleep(1.0)
        if graphs_and_refusals(client, service, ROUTINE)[1] > refused:
            raise RuntimeError(f"{ROUTINE}: its build was refused (dydc_compile_refusals_total)")
    client.post(url, content=body, headers=headers).raise_for_status()


def timed_post(client: Any, url: str, body: bytes, headers: dict[str, str]) -> tuple[float, bytes]:
    started = time.perf_counter()
    r = client.post(url, content=body, headers=headers)
    content = r.content  # the whole response received
    elapsed = time.perf_counter() - started
    if r.status_code != 200:
        raise RuntimeError(f"{url}: {r.status_code} {content[:300]!r}")
    return elapsed, content


def parse_micro(n: int, reps: int) -> dict[str, float]:
    """The v1 inputs parse alone at N = n, median ms per route."""
    from app.api.decoding import _parse_with_numeric_inputs, decode_inputs, parse_json

    t = np.random.default_rng(1).standard_normal(n) * 100
    body = v1_json(t)[0]
    start, end = body.index(b"["), body.index(b"]")

    def median_ms(f: Callable[[], object]) -> float:
        times = []
        for _ in range(reps):
            began = time.perf_counter()
            f()
            times.append(time.perf_counter() - began)
        return statistics.median(times) * 1e3

    fast = _parse_with_numeric_inputs(body)
    assert fast is not None and np.array_equal(fast["inputs"], t)
    return {
        "general path (orjson.loads, type scan, np.array)":
            median_ms(lambda: decode_inputs(parse_json(body)["inputs"])),
        "orjson.loads + np.array (no type scan)":
            median_ms(lambda: np.array(orjson.loads(body)["inputs"], dtype=np.float64)),
        "fast path (array located in the bytes, orjson + np.array)":
            median_ms(lambda: decode_inputs(_parse_with_numeric_inputs(body)["inputs"])),
        "numpy text parser (np.fromstring of the array, sep=',')":
            median_ms(lambda: np.fromstring(body[start + 1:end], sep=",")),
    }


VARIANTS = ("v1 JSON", "v2 JSON", "v2 binary")


def run(sizes: tuple[int, ...], reps: int) -> dict[str, Any]:
    import httpx

    results: dict[str, Any] = {"sizes": list(sizes), "reps": reps, "points": {}}
    # the service's own access log off, as uvicorn's is (--no-access-log); identity encoding,
    # since the floor does not compress (a client asking for gzip gets it: bench_gzip.py)
    env = {"DYDC_DEVICE": "cpu", "DYDC_LOG_LEVEL": "warning", "DYDC_ACCESS_LOG": "false"}
    with serve("app.main:app", env) as service, serve("bench.bench_wire:bare") as floor, \
            httpx.Client(timeout=300, headers={"Accept-Encoding": "identity"}) as client:
        compiled = False  # one kind for every N: its graph is waited for once
        for n in sizes:
            t = np.linspace(0.0, 50.0, n)
            if n >= COMPILE_MIN_SAMPLES and not compiled:
                until_graph(client, service, v1_json(t)[0])
                compiled = True
            requests = {
                "v1 JSON": (f"{service}/v1/routines/{ROUTINE}/sensitivities?strategy=forward",
                            f"{floor}/v1json", v1_json(t)),
                "v2 JSON": (f"{service}/v2/models/{ROUTINE}/infer", f"{floor}/v2json",
                            v2_json(t)),
                "v2 binary": (f"{service}/v2/models/{ROUTINE}/infer", f"{floor}/v2binary",
                              v2_binary(t)),
            }
            times: dict[str, list[float]] = {k: [] for k in
                                             [*VARIANTS, *(f"bare {v}" for v in VARIANTS)]}
            compute: list[float] = []
            sizes_out: dict[str, list[int]] = {}
            for rep in range(reps + 1):  # the first round warms up and is dropped
                for name, (real, bare_url, (body, headers)) in requests.items():
                    elapsed, content = timed_post(client, real, body, headers)
                    bare_elapsed, bare_content = timed_post(client, bare_url, body, headers)
                    if name == "v1 JSON":
                        compute_ms = orjson.loads(content)["timing_ms"]["compute"]
                    if rep == 0:
                        sizes_out[name] = [len(body), len(content), len(bare_content)]
                        continue
                    times[name].append(elapsed)
                    times[f"bare {name}"].append(bare_elapsed)
                    if name == "v1 JSON":
                        compute.append(compute_ms / 1e3)
            point = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            point["compute"] = statistics.median(compute) * 1e3
            point["bytes"] = sizes_out
            results["points"][str(n)] = point
            print(f"N={n}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in point.items()
                                         if k != "bytes"), flush=True)
    return results


# -- what clients with their default headers get (issue 20) -------------------------------------

BINARY_TARGET = 1.15  # v2 binary with a client's default headers, at most this times the floor


def default_codings() -> dict[str, str]:
    """The Accept-Encoding each client sends by default here (httpx and requests add br and
    zstd when brotli and zstandard are installed), beside a gzip-only client (curl
    --compressed, a browser without zstd) and identity."""
    import httpx
    import requests

    return {"identity": "identity",
            "httpx default": httpx.Client().headers["accept-encoding"],
            "requests default": requests.utils.default_headers()["Accept-Encoding"],
            "gzip, deflate": "gzip, deflate",
            "zstd": "zstd"}


def run_codings(sizes: tuple[int, ...], reps: int) -> dict[str, Any]:
    """v1 JSON and v2 binary answers at each N, for each client's Accept-Encoding: the coding
    the service chose, the bytes on the wire, the service's own time (v1: timing_ms.total,
    before compression) and the client's (the whole request, the answer decoded)."""
    import httpx

    codings = default_codings()
    out: dict[str, Any] = {"codings": codings, "points": {}}
    env = {"DYDC_DEVICE": "cpu", "DYDC_LOG_LEVEL": "warning", "DYDC_ACCESS_LOG": "false"}
    with serve("app.main:app", env) as service, serve("bench.bench_wire:bare") as floor, \
            httpx.Client(timeout=300) as client:
        compiled = False  # one kind for every N: its graph is waited for once
        for n in sizes:
            t = np.linspace(0.0, 50.0, n)
            if n >= COMPILE_MIN_SAMPLES and not compiled:
                until_graph(client, service, v1_json(t)[0])
                compiled = True
            variants = {
                "v1 JSON": (f"{service}/v1/routines/{ROUTINE}/sensitivities?strategy=forward",
                            f"{floor}/v1json", v1_json(t)),
                "v2 binary": (f"{service}/v2/models/{ROUTINE}/infer", f"{floor}/v2binary",
                              v2_binary(t)),
            }
            for name, (real, bare_url, (body, headers)) in variants.items():
                rows: dict[str, dict[str, Any]] = {}
                times: dict[str, list[float]] = {k: [] for k in [*codings, "bare"]}
                compute, server = [], []
                for rep in range(reps + 1):
                    for label, accept in [*codings.items(), ("bare", "identity")]:
                        url = bare_url if label == "bare" else real
                        began = time.perf_counter()
                        r = client.post(url, content=body,
                                        headers={**headers, "Accept-Encoding": accept})
                        r.read()
                        elapsed = time.perf_counter() - began
                        assert r.status_code == 200, r.text[:300]
                        if rep == 0:
                            rows[label] = {"coding": r.headers.get("content-encoding",
                                                                   "identity"),
                                           "wire_bytes": r.num_bytes_downloaded,
                                           "bytes": len(r.content)}
                            continue
                        times[label].append(elapsed)
                        if name == "v1 JSON" and label == "identity":
                            timing = r.json()["timing_ms"]
                            compute.append(timing["compute"])
                            server.append(timing["total"])
                for label, row in rows.items():
                    row["client_ms"] = statistics.median(times[label]) * 1e3
                point = {"rows": rows, "compute_ms": statistics.median(compute) if compute
                         else out["points"][str(n)]["v1 JSON"]["compute_ms"],
                         "server_ms": statistics.median(server) if server else None}
                out["points"].setdefault(str(n), {})[name] = point
                print(f"N={n} {name}: " + ", ".join(
                    f"{k} {r['coding']} {r['wire_bytes']:,} B {r['client_ms']:.1f} ms"
                    for k, r in rows.items()), flush=True)
    return out


def codings_markdown(results: dict[str, Any]) -> str:
    codings = results["codings"]
    lines = ["## Answers for clients with their default headers", "",
             "Accept-Encoding sent: " + "; ".join(f"{k}: `{v}`" for k, v in codings.items())
             + ". Per N and format: the coding the service chose, bytes on the wire, the "
             "client's time for the whole request (median ms, the answer decoded), and that "
             "over (the bare endpoint's identity time + compute).", "",
             "| N | format | client | coding | wire bytes | client ms | / (bare + compute) |",
             "|---:|---|---|---|--:|--:|--:|"]
    verdicts = []
    big = str(max(int(n) for n in results["points"]))
    for n, formats in results["points"].items():
        for name, point in formats.items():
            floor = point["rows"]["bare"]["client_ms"] + point["compute_ms"]
            for label, row in point["rows"].items():
                ratio = row["client_ms"] / floor
                lines.append(f"| {int(n):.0e} | {name} | {label} | {row['coding']} | "
                             f"{row['wire_bytes']:,} | {row['client_ms']:.1f} | "
                             f"{ratio:.2f}x |")
                if n == big and label in ("httpx default", "requests default",
                                          "gzip, deflate"):
                    target = WIRE_TARGET if name == "v1 JSON" else BINARY_TARGET
                    verdicts.append(f"{name}, {label}: {ratio:.2f}x (target ≤ {target}x): "
                                    f"**{'met' if ratio <= target else 'missed'}**")
    lines += ["", f"Targets at N = {int(big):.0e} (issue 20): " + "; ".join(verdicts) + "."]
    return "\n".join(lines) + "\n"


# -- the report ----------------------------------------------------------------------------------

def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x"


def write_markdown(results: dict[str, Any], parse: dict[str, float], path: Path) -> str:
    lines = [
        "# Wire benchmark",
        "",
        f"`{ROUTINE}` (two parameters: y, dy/dgamma, dy/domega), FP64, one request at a time "
        f"through uvicorn on 127.0.0.1; median of {results['reps']} repetitions, ms, from the "
        "first byte sent to the last byte received. Machine: "
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        "DYDC_DEVICE=cpu; shared with other work, so expect noise.",
        "",
        "| N | compute | v1 JSON | bare v1 JSON | v2 JSON | bare v2 JSON | v2 binary "
        "| bare v2 binary | v1 JSON / (bare + compute) | v2 binary / (bare + compute) "
        "| v2 binary / v1 JSON |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, p in results["points"].items():
        c = p["compute"]
        lines.append(
            f"| {int(n):.0e} | {c:.1f} | {p['v1 JSON']:.1f} | {p['bare v1 JSON']:.1f} "
            f"| {p['v2 JSON']:.1f} | {p['bare v2 JSON']:.1f} | {p['v2 binary']:.1f} "
            f"| {p['bare v2 binary']:.1f} | {_ratio(p['v1 JSON'], p['bare v1 JSON'] + c)} "
            f"| {_ratio(p['v2 binary'], p['bare v2 binary'] + c)} "
            f"| {_ratio(p['v2 binary'], p['v1 JSON'])} |"
        )
    big = results["points"].get(str(max(results["sizes"])))
    if big is not None:
        c = big["compute"]
        v1_ok = big["v1 JSON"] <= WIRE_TARGET * (big["bare v1 JSON"] + c)
        bin_ok = big["v2 binary"] <= WIRE_TARGET * (big["bare v2 binary"] + c)
        half_ok = big["v2 binary"] <= 0.5 * big["v1 JSON"]
        lines += [
            "",
            f"Targets at N = {max(results['sizes']):.0e} (issue 10): v1 JSON within "
            f"{WIRE_TARGET}x of (bare + compute): **{'met' if v1_ok else 'missed'}**; "
            f"v2 binary within {WIRE_TARGET}x of "
            f"(bare + compute): **{'met' if bin_ok else 'missed'}**; v2 binary at most half "
            f"of v1 JSON: **{'met' if half_ok else 'missed'}**.",
            "",
            "Bytes at that N (request, response, bare response): "
            + "; ".join(f"{k}: {a:,} / {b:,} / {d:,}" for k, (a, b, d) in big["bytes"].items())
            + ".",
        ]
    lines += ["", "v1 `inputs` parse alone, N = 1e6 (median ms, in process):", "",
              "| route | ms |", "|---|---:|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in parse.items()]
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def plot(results: dict[str, Any], path: Path) -> None:
    from plots import pyplot  # (a script: bench/ is on its path)

    plt = pyplot()
    if plt is None:
        return

    ns = [int(n) for n in results["points"]]
    fig, ax = plt.subplots(figsize=(8, 5))
    styles = {"v1 JSON": "C0", "v2 JSON": "C1", "v2 binary": "C2"}
    for name, color in styles.items():
        ax.plot(ns, [p[name] for p in results["points"].values()], "o-", color=color,
                label=name)
        ax.plot(ns, [p[f"bare {name}"] + p["compute"] for p in results["points"].values()],
                "s--", color=color, alpha=0.6, label=f"bare {name} + compute")
    ax.plot(ns, [p["compute"] for p in results["points"].values()], "k^:", label="compute")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("N (samples per request)")
    ax.set_ylabel("ms per request (median)")
    ax.set_title(f"{ROUTINE}: end to end vs the floor (bare endpoint + compute)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--codings", action="store_true",
                        help="only the answers for clients with their default headers "
                             "(bench/results/wire_codings.*)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.codings:
        codings = run_codings(tuple(args.sizes), args.reps)
        (RESULTS / "wire_codings.json").write_text(json.dumps(codings, indent=2) + "\n")
        text = codings_markdown(codings)
        (RESULTS / "wire_codings.md").write_text(
            "# Wire benchmark: compressed answers\n\nCommand: `.venv/bin/python "
            f"bench/bench_wire.py --codings --sizes {' '.join(map(str, args.sizes))} --reps "
            f"{args.reps}`\n\n" + text)
        print(text)
        return
    parse = parse_micro(1_000_000, args.reps)
    results = run(tuple(args.sizes), args.reps)
    results["parse_ms"] = parse
    (RESULTS / "wire.json").write_text(json.dumps(results, indent=2) + "\n")
    print(write_markdown(results, parse, RESULTS / "wire.md"))
    plot(results, RESULTS / "wire.png")


if __name__ == "__main__":
    main()
