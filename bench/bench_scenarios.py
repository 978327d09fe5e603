"""Scenarios benchmark (issue 23): a stress grid of a book in one request, against the same
number of samples in one evaluation and against one request per scenario.

Not a test. Run from the repository root:

    .venv/bin/python bench/bench_scenarios.py           # writes bench/results/scenarios.md
    .venv/bin/python bench/bench_scenarios.py --rounds 3

It starts the service as a uvicorn subprocess on 127.0.0.1 (``--no-access-log``,
DYDC_DEVICE=cpu) and times, one request at a time, each the median of interleaved rounds after
an untimed warm-up, from the call to the numpy arrays in hand:

- ``scenarios``: ``dydc.Client.scenarios`` of ``black_scholes_call``: a book of 1e4 options
  under an 8 x 8 product grid of sigma (relative) and r (absolute) shifts, 64 scenarios, one
  request whose answer comes in tensor form (``Accept: application/vnd.dydc.tensors``, the
  client's default); ``scenarios, JSON`` the same answered as JSON (``protocol="json"``);
  ``scenarios, totals only`` with ``totals_only=True`` (the sums over the book, no
  per-sample arrays);
- ``evaluate 6.4e5``: ``Client(protocol="json").evaluate`` of the book tiled 64 times, 6.4e5
  samples in one request, the same number of samples revalued over the same protocol
  (target: scenarios at most 1.3x its time); ``evaluate 6.4e5, binary`` the same over v2
  binary tensors (``protocol="auto"`` at this size), for reference;
- ``64 requests``: ``Client.evaluate`` once per scenario at its shifted parameters, as a caller
  without the route would (protocol auto: binary v2 at this size; target: scenarios at least
  10x faster); ``64 requests, JSON`` the same over v1 JSON.

Every scenario's values are checked against the separate requests' before anything is timed.
Two services are measured one after the other in the same run: compiling off (evaluation
eagerly), and compiling on with a fresh cache directory, timed once the values graph that the
first revaluation asked for is built and loaded (docs/compiled.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dydc
import httpx
import numpy as np
import torch
from bench_wire import serve

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
ROUTINE = "black_scholes_call"
N = 10_000
BASE = {"sigma": 0.2, "r": 0.05}
SIGMA_REL = np.linspace(-0.2, 0.2, 8).tolist()
R_ABS = np.linspace(-0.01, 0.01, 8).tolist()
SHIFTS = {"sigma": ("relative", SIGMA_REL), "r": ("absolute", R_ABS)}
EVAL_TARGET = 1.3  # scenarios at most this times one evaluation of S x N samples
SEPARATE_TARGET = 10.0  # scenarios at least this much faster than S requests


def book(n: int, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.column_stack(
        [rng.uniform(40, 60, n), rng.uniform(40, 60, n), rng.uniform(0.1, 2.0, n)]
    )


def answer_size(url: str, x: np.ndarray, accept: str) -> int:
    """Bytes of the scenarios answer in the form ``accept`` asks for, uncompressed."""
    shifts = {f: {"type": t, "values": v} for f, (t, v) in SHIFTS.items()}
    r = httpx.post(f"{url}/v1/routines/{ROUTINE}/scenarios", timeout=300,
                   headers={"Accept-Encoding": "identity", "Accept": accept},
                   json={"inputs": x.tolist(), "params": BASE, "scenarios": {"shifts": shifts}})
    return len(r.content)


def median_ms(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[float]]:
    """Each function once untimed, then ``rounds`` interleaved timed rounds."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def wait_for_graph(url: str, timeout_s: float = 600) -> float:
    """Seconds until the service reports a compiled graph of ROUTINE made ready (the build
    that the first large revaluation asked for)."""
    began = time.monotonic()
    line = f'dydc_compiled_graphs_total{{routine="{ROUTINE}"}}'
    while time.monotonic() - began < timeout_s:
        text = httpx.get(f"{url}/metrics", timeout=10).text
        if any(row.startswith(line) and float(row.split()[-1]) >= 1
               for row in text.splitlines()):
            return time.monotonic() - began
        time.sleep(0.5)
    raise RuntimeError(f"no compiled graph of {ROUTINE} after {timeout_s:.0f} s")


def measure(env: dict[str, str], x: np.ndarray, grid: list[tuple[float, float]],
            rounds: int, compiled: bool) -> dict[str, Any]:
    """One service configuration: the checks, then the timed cases."""
    tiled = np.tile(x, (len(grid), 1))
    out: dict[str, Any] = {}
    with (
        serve("app.main:app", env) as url,
        dydc.Client(url, timeout=300) as client,
        dydc.Client(url, timeout=300, protocol="json") as json_client,
    ):

        def scenarios(over: dydc.Client = client, totals_only: bool = False
                      ) -> dydc.ScenarioResult:
            return over.scenarios(ROUTINE, x, BASE, SHIFTS, totals_only=totals_only)

        def evaluate_all(over: dydc.Client = json_client) -> dydc.Result:
            return over.evaluate(ROUTINE, tiled, BASE)

        def separate(over: dydc.Client = client) -> list[np.ndarray]:
            return [over.evaluate(ROUTINE, x, {"sigma": s, "r": r}).values for s, r in grid]

        r = scenarios()  # compiling: this large launch asks for the values graph's build
        if compiled:
            out["build_s"] = wait_for_graph(url)
            scenarios()  # the graph is published before this launch, which runs through it
            r = scenarios()
        assert r.values is not None and r.values.shape == (len(grid), N)
        one_by_one = np.stack(separate())
        np.testing.assert_allclose(r.values, one_by_one, rtol=1e-12, atol=1e-12)
        as_json = scenarios(json_client)
        np.testing.assert_array_equal(r.values, as_json.values)  # the same bits either way
        totals = scenarios(totals_only=True).total_pnl
        np.testing.assert_allclose(totals, r.total_pnl, rtol=1e-12)
        out["values"] = r.values
        out["server_ms"] = r.timing_ms or {}
        out["answer_bytes"] = answer_size(url, x, "application/json")
        out["tensor_bytes"] = answer_size(url, x, "application/vnd.dydc.tensors")
        out["times"] = median_ms(
            {
                "scenarios": scenarios,
                "scenarios, JSON": lambda: scenarios(json_client),
                "scenarios, totals only": lambda: scenarios(totals_only=True),
                "evaluate 6.4e5": evaluate_all,
                "evaluate 6.4e5, binary": lambda: evaluate_all(client),
                "64 requests": separate,
                "64 requests, JSON": lambda: separate(json_client),
            },
            rounds,
        )
        out["server_ms_timed"] = scenarios().timing_ms or {}
    return out


def summary(label: str, run: dict[str, Any], scenarios_n: int) -> list[str]:
    """The targets against one configuration's medians."""
    times = run["times"]
    med = {k: statistics.median(v) for k, v in times.items()}
    to_eval = med["scenarios"] / med["evaluate 6.4e5"]
    speedup = med["64 requests"] / med["scenarios"]
    totals_speedup = med["64 requests"] / med["scenarios, totals only"]
    return [
        f"{label}:",
        "",
        f"- scenarios / one evaluation of {scenarios_n * N:.1e} samples (v1 JSON): "
        f"{to_eval:.2f}x (target at most {EVAL_TARGET}x): "
        f"**{'met' if to_eval <= EVAL_TARGET else 'missed'}**",
        f"- scenarios / one evaluation over v2 binary (no scenarios over v2): "
        f"{med['scenarios'] / med['evaluate 6.4e5, binary']:.2f}x",
        f"- 64 separate requests / scenarios: {speedup:.2f}x (target at least "
        f"{SEPARATE_TARGET:.0f}x): **{'met' if speedup >= SEPARATE_TARGET else 'missed'}**",
        f"- 64 separate requests / scenarios, totals only: {totals_speedup:.2f}x (target at "
        f"least {SEPARATE_TARGET:.0f}x): "
        f"**{'met' if totals_speedup >= SEPARATE_TARGET else 'missed'}**",
        f"- 64 separate requests over JSON / scenarios, JSON: "
        f"{med['64 requests, JSON'] / med['scenarios, JSON']:.2f}x",
        f"- scenarios in tensor form / as JSON: "
        f"{med['scenarios'] / med['scenarios, JSON']:.2f}x",
        f"- the scenarios request's own timing_ms (checked call before the rounds): "
        f"{run['server_ms']}; after the rounds: {run['server_ms_timed']}; its answer "
        f"(values and pnl of every scenario) is {run['answer_bytes'] / 2**20:.1f} MiB as "
        f"JSON, {run['tensor_bytes'] / 2**20:.1f} MiB as tensors. A separate request is "
        f"{N:,} samples over v2 binary: {med['64 requests'] / scenarios_n:.1f} ms each.",
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    x = book(N)
    grid = [(0.2 * (1 + a), 0.05 + b) for a in SIGMA_REL for b in R_ABS]
    base_env = {"DYDC_DEVICE": "cpu", "DYDC_LOG_LEVEL": "warning", "DYDC_ACCESS_LOG": "false"}
    eager = measure({**base_env, "DYDC_COMPILE": "false"}, x, grid, args.rounds, False)
    with tempfile.TemporaryDirectory(prefix="dydc-bench-scenarios-") as cache:
        compiled = measure({**base_env, "DYDC_COMPILE": "true",
                            "DYDC_COMPILE_CACHE_DIR": cache}, x, grid, args.rounds, True)
    np.testing.assert_allclose(compiled["values"], eager["values"], rtol=1e-12, atol=1e-12)
    lines = [
        "# Scenarios: one request for a stress grid",
        "",
        f"`python bench/bench_scenarios.py --rounds {args.rounds}` on {platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}, DYDC_DEVICE=cpu; "
        f"`{ROUTINE}`, float64, a book of {N:,} options under {len(grid)} scenarios "
        f"(sigma x {len(SIGMA_REL)} relative, r x {len(R_ABS)} absolute, product), "
        f"{len(grid) * N:,} samples revalued. Through uvicorn on 127.0.0.1 and `dydc.Client`, "
        "one request at a time, from the call to the arrays in hand; median of "
        f"{args.rounds} interleaved rounds after a warm-up, ms. Two services one after the "
        "other in the same run: *eager* (DYDC_COMPILE=false: evaluation eagerly) and "
        "*compiled* (DYDC_COMPILE=true, a fresh cache directory; the first revaluation asks "
        "for the values graph of the per-sample kind, timed once it is built and loaded "
        f"({compiled['build_s']:.0f} s after that request); the 64 separate requests, "
        "1e4 samples each, are small launches that the loaded graph serves too). "
        "The machine is shared: expect noise.",
        "",
        "| case | eager median ms | eager min | eager max | compiled median ms | compiled min "
        "| compiled max |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, values in eager["times"].items():
        other = compiled["times"][name]
        lines.append(
            f"| {name} | {statistics.median(values):.1f} | {min(values):.1f} | "
            f"{max(values):.1f} | {statistics.median(other):.1f} | {min(other):.1f} | "
            f"{max(other):.1f} |")
    lines += ["", *summary("Eager", eager, len(grid)),
              *summary("Compiled", compiled, len(grid)),
              "Every scenario's values equal the separate requests' (rtol 1e-12), and the "
              "compiled service's equal the eager one's (rtol 1e-12)."]
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scenarios.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
