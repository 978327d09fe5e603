"""Eager forward mode with and without app.engine.differentiation.zero_tangents, same run.

Not a test. Run from the repository root:

    .venv/bin/python bench/bench_zero_tangents.py            # writes bench/results/zero_tangents.md
    .venv/bin/python bench/bench_zero_tangents.py --rounds 5

Each case is ``differentiate`` of a registered routine at its default parameters (float64,
every parameter in wrt, shared), timed in a fresh process per configuration and round: one
process leaves PyTorch's Meta kernels as they are (*torch's*), the other installs the zero
tangents' kernels first (*installed*, what the service does at start-up). Small batches,
where the per-operation cost is what a request pays; the large-N time is the kernels' own and
does not move. Median of the rounds' per-call means, µs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CASES = [  # routine, samples, order, strategy, calls per round
    ("linear", 16, 1, "forward", 400),
    ("exponential_decay", 16, 1, "forward", 400),
    ("black_scholes_call", 16, 1, "forward", 200),
    ("black_scholes_call", 16, 1, "forward-dual", 200),
    ("black_scholes_call", 16, 2, "forward", 50),
    ("logistic_rk4", 16, 1, "forward", 3),
    ("logistic_rk4", 4, 2, "forward", 1),
]

CHILD = """
import json, sys, time
sys.path.insert(0, {root!r})
import torch
from app.engine.differentiation import zero_tangents
from app.engine.differentiation.differentiate import differentiate
from app.engine.differentiation.problem import Problem
from routines import discover
if {install}:
    zero_tangents.install()
found = discover()
out = []
for name, n, order, strategy, calls in {cases!r}:
    r = found[name]
    x = 1 + 0.5 * torch.rand(n, len(r.inputs), dtype=torch.float64,
                             generator=torch.Generator().manual_seed(0))
    params = {{p.name: torch.tensor(p.default, dtype=torch.float64) for p in r.params}}
    p = Problem(r, x, params, r.param_names)
    differentiate(p, strategy, order=order)
    start = time.perf_counter()
    for _ in range(calls):
        differentiate(p, strategy, order=order)
    out.append((time.perf_counter() - start) / calls * 1e6)
print(json.dumps(out))
"""


def run(install: bool) -> list[float]:
    code = CHILD.format(root=str(ROOT), install=install, cases=CASES)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    rounds: dict[bool, list[list[float]]] = {False: [], True: []}
    for _ in range(args.rounds):
        for install in (False, True):
            rounds[install].append(run(install))
    med = {k: [statistics.median(r[i] for r in v) for i in range(len(CASES))]
           for k, v in rounds.items()}
    lines = [
        "# Eager forward mode: zero tangents sized in Python or by the installed kernels", "",
        f"`python bench/bench_zero_tangents.py --rounds {args.rounds}` on "
        f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        "OMP_NUM_THREADS=1; a fresh process per configuration and round, median of the "
        "rounds, µs a call of `differentiate` (float64, every parameter in wrt).", "",
        "| routine | N | order | strategy | torch's µs | installed µs | speed-up |",
        "|---|--:|--:|---|--:|--:|--:|",
    ]
    for i, (name, n, order, strategy, _) in enumerate(CASES):
        before, after = med[False][i], med[True][i]
        lines.append(f"| {name} | {n} | {order} | {strategy} | {before:,.0f} | {after:,.0f} "
                     f"| {before / after:.2f}x |")
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "zero_tangents.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
