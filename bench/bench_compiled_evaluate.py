"""Plain evaluation of every routine at N = 1e6, eagerly against its compiled values graph
(app.engine.compiled: the kind with no wrt), in process, on the CPU, in float64.

    .venv/bin/python bench/bench_compiled_evaluate.py [--rounds 5] [--n 1000000]

Writes bench/results/compiled_evaluate.md. Each routine's values graph (per-sample parameters,
the kind a scenarios revaluation or a coalesced batch launches; a launch with shared
parameters is served by it with them expanded) is built inline into a fresh cache directory
and checked as the build process does, then eager evaluation (``Problem.evaluate``) and the
graph (``CompiledForward.run``, as the executor calls it) are timed in interleaved rounds,
median ms. The inputs are bench_strategies.py's for forward mode; the parameters their
defaults, per sample.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

# as the service sets it (app/__init__.py) before torch loads: OpenMP's threads wait asleep
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_strategies import FORWARD_INPUTS, _positive, interleaved_ms

from app.engine.compiled.builds import InlineBuilder
from app.engine.compiled.forward import CompiledForward
from app.engine.differentiation.differentiate import TRANSFORMS_LOCK
from app.engine.differentiation.strategies import Problem
from routines import discover

RESULTS = Path(__file__).resolve().parent / "results"
CPU = torch.device("cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, default=1_000_000)
    args = parser.parse_args()
    n = args.n
    rows = []
    with tempfile.TemporaryDirectory(prefix="dydc-bench-evaluate-") as cache:
        compiled = CompiledForward(chunk=1 << 20, min_samples=2,
                                   builder=InlineBuilder(Path(cache)))
        for name, r in sorted(discover().items()):
            form = FORWARD_INPUTS.get(name, _positive)
            x = form(torch.Generator().manual_seed(n), n, len(r.inputs))
            params = {p.name: torch.full((n,), float(p.default), dtype=torch.float64)
                      for p in r.params}
            problem = Problem(r, x, params, ())
            started = time.perf_counter()
            with TRANSFORMS_LOCK:
                compiled.run(problem)  # asks for the build: inline here
            build_s = time.perf_counter() - started
            compiled.swap_in(CPU)
            refused = compiled.refused(problem)
            if refused is not None:
                rows.append((name, build_s, None, None, refused))
                continue
            got = compiled.run(problem)
            assert got is not None
            torch.testing.assert_close(got.values, problem.evaluate(), rtol=1e-9, atol=0)
            ms = interleaved_ms({"eager": problem.evaluate,
                                 "compiled": lambda p=problem: compiled.run(p)}, args.rounds)
            rows.append((name, build_s, ms["eager"], ms["compiled"], None))
            print(name, f"build {build_s:.1f} s", ms, flush=True)
        compiled.close()
    lines = [
        "# Plain evaluation: eager against the compiled values graph",
        "",
        f"`python bench/bench_compiled_evaluate.py --rounds {args.rounds} --n {n}` on "
        f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), float64, N = {n:,}, per-sample parameters, in "
        "process; median ms of interleaved rounds after a warm-up call. Build: trace, "
        "AOTInductor, check, inline (the service builds in a process of its own, at idle "
        "priority). The machine is shared: expect noise.",
        "",
        "| routine | eager ms | compiled ms | eager / compiled | build s |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, build_s, eager, fast, refused in rows:
        if eager is None or fast is None:
            lines.append(f"| {name} | | | refused ({refused}) | {build_s:.1f} |")
        else:
            lines.append(f"| {name} | {eager:.1f} | {fast:.1f} | {eager / fast:.2f}x | "
                         f"{build_s:.1f} |")
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "compiled_evaluate.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
