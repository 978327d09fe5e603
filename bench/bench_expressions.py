"""Callers' expressions against the routines they restate, forward mode (issue 22's targets):
the logistic closed form as an expression at N = 1e6 within 1.2x ``logistic_growth``, and the
ODE form (rk4, 200 steps) within 1.2x ``logistic_rk4`` at N = 1e5 once compiled.

    .venv/bin/python bench/bench_expressions.py [--rounds 7]

Both sides as a warm service runs a large launch: each kind's graph built in the build process
(the expression made again there from its source), loaded, then the calls timed in shuffled
rounds (bench_strategies.interleaved_ms), wrt every parameter (r, K), shared parameters,
float64 on the CPU. "eager" is the expression's forward mode without a graph (what every
expression ran before it could be compiled). Values and derivatives are checked against the
routine's (1e-12 relative) before anything is timed. Writes bench/results/expressions.md.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.config import Settings
from app.engine import CompiledForward, cache_host_allocations
from app.engine.differentiation.differentiate import differentiate
from app.engine.differentiation.strategies import Problem
from app.engine.runtime.executor import run_strategy
from app.expressions import Expressions, OdeSpec
from bench.bench_strategies import interleaved_ms
from routines import Routine, discover

RESULTS = Path(__file__).resolve().parent / "results"
CPU = torch.device("cpu")
TARGET = 1.2
NAMES = (["N0", "t"], ["r", "K"])
CLOSED = "K / (1 + (K - N0) / N0 * exp(-r * t))"
ODE = OdeSpec(rhs="r * n * (1 - n / K)", state="n", initial="N0", time="t", steps=200,
              method="rk4")


def problem(routine: Routine, n: int) -> Problem:
    g = torch.Generator().manual_seed(n)
    x = torch.stack([1 + 89 * torch.rand(n, generator=g, dtype=torch.float64),
                     10 * torch.rand(n, generator=g, dtype=torch.float64)], 1)
    params = {"r": torch.tensor(0.5, dtype=torch.float64),
              "K": torch.tensor(100.0, dtype=torch.float64)}
    return Problem(routine, x, params, ("r", "K"))


def check(got: Problem, want: Problem, compiled: CompiledForward) -> None:
    a, _ = run_strategy(got, "forward", compiled)
    b, _ = run_strategy(want, "forward", compiled)
    for name, x, y in (("values", a.values, b.values),
                       *((k, a.derivatives[k], b.derivatives[k]) for k in b.derivatives)):
        if not torch.allclose(x, y, rtol=1e-12, atol=0.0):
            raise SystemExit(f"{got.routine.description}: {name} differs from the routine's")


def run(rounds: int, eager_rounds: int) -> list[tuple[str, int, float, float, float]]:
    """[(case, N, routine ms, expression compiled ms, expression eager ms)]"""
    settings = Settings()
    if settings.host_allocator_cache:
        cache_host_allocations()
    compiled = CompiledForward(settings.compile_chunk, min_samples=2)
    routines, expressions = discover(), Expressions()
    cases = (
        (f"closed form ({CLOSED}) vs logistic_growth", 1_000_000,
         expressions.expression(CLOSED, *NAMES).routine, routines["logistic_growth"]),
        ("ODE form (r * n * (1 - n / K), rk4, 200 steps) vs logistic_rk4", 100_000,
         expressions.ode(ODE, *NAMES).routine, routines["logistic_rk4"]),
    )
    out = []
    for label, n, expression, routine in cases:
        mine, theirs = problem(expression, n), problem(routine, n)
        began = time.perf_counter()
        compiled.warm_up([mine, theirs], CPU)  # built in the build process, loaded
        for p in (mine, theirs):
            if not compiled.compiled(p.routine, p.wrt, torch.float64):
                refusals = dict(compiled.catalogue.refusals)
                raise SystemExit(f"{p.routine.name} was not compiled: {refusals}")
        print(f"{label}: both built in {time.perf_counter() - began:.0f} s", flush=True)
        check(mine, theirs, compiled)
        calls: dict[str, Callable[[], object]] = {
            "routine": lambda p=theirs: run_strategy(p, "forward", compiled),  # type: ignore[misc]
            "expression": lambda p=mine: run_strategy(p, "forward", compiled),  # type: ignore[misc]
        }
        ms = interleaved_ms(calls, rounds)
        eager = interleaved_ms({"eager": lambda p=mine: differentiate(p, "forward")},  # type: ignore[misc]
                               eager_rounds)["eager"]
        out.append((label, n, ms["routine"], ms["expression"], eager))
        print(f"  N={n:,}: routine {ms['routine']:.1f} ms, expression compiled "
              f"{ms['expression']:.1f} ms ({ms['expression'] / ms['routine']:.2f}x), eager "
              f"{eager:.1f} ms ({eager / ms['routine']:.2f}x)", flush=True)
    compiled.close()
    return out


def report(rows: list[tuple[str, int, float, float, float]], rounds: int) -> str:
    lines = [
        "# Expressions against the routines they restate (forward mode)",
        "",
        "`.venv/bin/python bench/bench_expressions.py --rounds "
        f"{rounds}` on {platform.machine()}, Python {platform.python_version()}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; float64, wrt r and K, "
        "shared parameters; medians of interleaved rounds; the routine through its compiled "
        f"graph. Target: the expression compiled at most {TARGET}x the routine.",
        "",
        "| case | N | routine (compiled) | expression compiled | ratio | expression eager "
        "(before) | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, n, routine, mine, eager in rows:
        lines.append(f"| {label} | {n:,} | {routine:.1f} ms | {mine:.1f} ms | "
                     f"**{mine / routine:.2f}x** | {eager:.1f} ms | {eager / routine:.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--eager-rounds", type=int, default=2,
                        help="rounds of the eager expression (slow: the ODE's takes seconds)")
    args = parser.parse_args()
    text = report(run(args.rounds, args.eager_rounds), args.rounds)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "expressions.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
