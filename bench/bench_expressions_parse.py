"""Parsing and checking an expression of 1,000 nodes (issue 22's target: at most 5 ms), and
what the adapter adds (interpreting it into closures and declaring the routine), and a
lookup in its LRU.

    .venv/bin/python bench/bench_expressions_parse.py [--rounds 300]

Writes bench/results/expressions_parse.md: the median and 99th percentile of each over
``--rounds`` runs of the same text (after a warm-up), on one core, with the service's garbage
collector settings.
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.config import Settings
from app.expressions import Bounds, Expressions, parse
from app.expressions.tree import walk

RESULTS = Path(__file__).resolve().parent / "results"
INPUTS, PARAMS = ("x", "t"), ("a", "b", "c")
TARGET_MS = 5.0


def expression(nodes: int) -> str:
    """A balanced expression of exactly ``nodes`` nodes: binary operations, function calls,
    names and literals mixed, parenthesised as a person would."""
    leaves = ["x", "a", "t", "b", "c", "2.5", "x"]
    ops = ["+", "*", "-", "/"]
    functions = ["exp", "sin", "log1p", "sqrt", "tanh"]

    def build(n: int, depth: int) -> str:
        if n == 1:
            return leaves[depth % len(leaves)]
        if n == 2:
            return f"{functions[depth % len(functions)]}({build(1, depth + 1)})"
        if n % 5 == 0:
            return f"{functions[depth % len(functions)]}({build(n - 1, depth + 1)})"
        left = (n - 1) // 2
        return (
            f"({build(left, depth + 1)} {ops[depth % len(ops)]} {build(n - 1 - left, depth + 2)})"
        )

    return build(nodes, 0)


def timed_ms(fn: Callable[[], object], rounds: int) -> list[float]:
    fn()
    times = []
    for _ in range(rounds):
        began = time.perf_counter()
        fn()
        times.append((time.perf_counter() - began) * 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--nodes", type=int, default=1000)
    args = parser.parse_args()

    # as the service runs (app.main): what is alive at start-up frozen out of collections, and
    # its young-generation threshold; without this, a full collection over torch's objects
    # every few hundred parses puts ~40 ms into the 99th percentile
    gc.freeze()
    gc.set_threshold(Settings().gc_threshold, *gc.get_threshold()[1:])

    text = expression(args.nodes)
    bounds = Bounds()
    tree = parse(text, INPUTS + PARAMS, bounds)
    counted = sum(1 for _ in walk(tree))
    assert counted == args.nodes, counted

    cached = Expressions(bounds)
    cached.expression(text, INPUTS, PARAMS)
    rows = {
        "parse + check (ast.parse and the allow-list visitor)": timed_ms(
            lambda: parse(text, INPUTS + PARAMS, bounds), args.rounds
        ),
        "parse + check + interpret + routine (a cache miss)": timed_ms(
            lambda: Expressions(bounds).expression(text, INPUTS, PARAMS), args.rounds
        ),
        "LRU hit": timed_ms(lambda: cached.expression(text, INPUTS, PARAMS), args.rounds),
    }
    lines = [
        "# Parsing expressions",
        "",
        f"`.venv/bin/python bench/bench_expressions_parse.py --rounds {args.rounds}` on "
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()}: "
        f"an expression of {counted} nodes, {len(text)} characters. Target (issue 22): parse "
        f"and check at most {TARGET_MS:g} ms.",
        "",
        "| step | median ms | p99 ms |",
        "|---|---:|---:|",
    ]
    for name, times in rows.items():
        p99 = statistics.quantiles(times, n=100)[98]
        lines.append(f"| {name} | {statistics.median(times):.3f} | {p99:.3f} |")
    median = statistics.median(next(iter(rows.values())))
    lines += [
        "",
        f"Parse + check: {median:.2f} ms median, target {TARGET_MS:g} ms: "
        f"{'met' if median <= TARGET_MS else 'NOT met'}.",
    ]
    report = "\n".join(lines) + "\n"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "expressions_parse.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
