"""Time every differentiation strategy against plain evaluation, on the CPU, in float64.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python bench/bench_strategies.py

Writes bench/results/strategies.md (ms per call and the ratio to plain evaluation) and
bench/results/strategies.png (log-log time against N per strategy). Each cell is the median
of several calls after a warm-up call, timed in interleaved rounds; strategies over their
default caps (app/config.py) are shown as 'capped'. Ratios are the numbers to compare: they
are measured in one run, with evaluation and the strategies interleaved call by call, so a
noisy machine shifts both alike.
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from app.config import Settings
from app.engine import CompiledForward, cache_host_allocations
from app.engine.differentiation.differentiate import differentiate
from app.engine.differentiation.evaluation import evaluate_batch
from app.engine.differentiation.strategies import STRATEGIES, Problem
from app.engine.runtime.executor import run_strategy
from routines import Routine, discover

RESULTS = Path(__file__).resolve().parent / "results"
CPU = torch.device("cpu")
SIZES = (10, 1_000, 100_000, 1_000_000)
PLAIN = "evaluate (no derivative)"


@dataclass(frozen=True)
class Case:
    routine: str
    wrt: tuple[str, ...]
    inputs: Callable[[torch.Generator, int], torch.Tensor]

    @property
    def label(self) -> str:
        return f"{self.routine} (wrt {', '.join(self.wrt)})"


def _uniform(g: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g, dtype=torch.float64)


CASES = (
    Case("black_scholes_call", ("sigma", "r"),
         lambda g, n: torch.stack([_uniform(g, n, 80, 120), _uniform(g, n, 80, 120),
                                   _uniform(g, n, 0.25, 2)], 1)),
    Case("linear", ("C",), lambda g, n: _uniform(g, n, -10, 10)[:, None]),
)


def caps() -> dict[str, int]:
    settings = Settings()
    return {name: getattr(settings, s.cap_setting)
            for name, s in STRATEGIES.items() if s.cap_setting is not None}


def interleaved_ms(calls: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median ms per call of each callable, after one warm-up call each. The calls are
    timed in rounds, one call of each per round in a shuffled order, so that a burst of
    load on a shared machine hits every strategy alike rather than one of them, and no call
    always follows the same one (a rotating order timed ``auto`` after the heaviest strategy
    every round: 2.5x against 1.4x for ``forward``, the same code)."""
    for call in calls.values():
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    order = random.Random(0)
    for _ in range(rounds):
        order.shuffle(names)
        for name in names:
            started = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def run(sizes: tuple[int, ...], rounds: int) -> dict[str, dict[str, dict[int, float | None]]]:
    """{case label: {strategy or PLAIN: {N: ms, or None when capped}}}"""
    routines: dict[str, Routine] = discover()
    limit = caps()
    settings = Settings()
    # as the service runs them: its host allocator settings, and compiled forward mode for
    # large launches (each cell's graph built in the build process and loaded before timing)
    if settings.host_allocator_cache:
        cache_host_allocations()
    compiled = (CompiledForward(settings.compile_chunk, settings.compile_min_samples)
                if settings.compile else None)
    table: dict[str, dict[str, dict[int, float | None]]] = {}
    for case in CASES:
        r = routines[case.routine]
        params = {p.name: torch.tensor(p.default, dtype=torch.float64) for p in r.params}
        rows: dict[str, dict[int, float | None]] = {PLAIN: {}, **{s: {} for s in STRATEGIES}}
        for n in sizes:
            x = case.inputs(torch.Generator().manual_seed(n), n)
            problem = Problem(r, x, params, case.wrt)
            if compiled is not None:  # built (or refused) and loaded, as a warm service has it
                compiled.warm_up([problem], CPU)
            calls: dict[str, Callable[[], object]] = {
                PLAIN: lambda r=r, x=x, params=params: evaluate_batch(r, x, params)}
            for s in STRATEGIES:
                if n > limit.get(s, n):
                    rows[s][n] = None
                else:
                    calls[s] = lambda s=s, p=problem: run_strategy(p, s, compiled)  # type: ignore[misc]
            for name, ms in interleaved_ms(calls, rounds).items():
                rows[name][n] = ms
                print(f"{case.label:36s} N={n:>9,} {name:24s} {ms:10.3f} ms  "
                      f"{ms / rows[PLAIN][n]:8.2f}x", flush=True)  # type: ignore[operator]
        table[case.label] = rows
    return table


FORWARD_SIZES = (1_000, 100_000, 1_000_000)
EAGER = "forward, eager (DYDC_COMPILE=false)"
COMPILED = "forward, compiled"


def forward_table(rounds: int) -> list[tuple[str, int, float, float, float]]:
    """Every routine, wrt all its parameters: plain evaluation, eager forward mode, and
    compiled forward mode (what the service runs for launches of DYDC_COMPILE_MIN_SAMPLES
    and more; here at every N, to show what it gives below that too), strategy=auto.
    [(routine, N, evaluate ms, eager ms, compiled ms)]"""
    settings = Settings()
    compiled = CompiledForward(settings.compile_chunk, min_samples=2)
    out = []
    for name, r in sorted(discover().items()):
        params = {p.name: torch.tensor(p.default, dtype=torch.float64) for p in r.params}
        form = FORWARD_INPUTS.get(name, _positive)
        for n in FORWARD_SIZES:
            x = form(torch.Generator().manual_seed(n), n, len(r.inputs))
            problem = Problem(r, x, params, r.param_names)
            started = time.perf_counter()
            compiled.warm_up([problem], CPU)  # built in the build process (or refused), loaded
            ran = run_strategy(problem, "auto", compiled)[1]
            first = time.perf_counter() - started
            calls: dict[str, Callable[[], object]] = {
                PLAIN: lambda r=r, x=x, params=params: evaluate_batch(r, x, params),
                COMPILED: lambda p=problem: run_strategy(p, "auto", compiled),
            }
            if compiled.applies(problem):  # otherwise it is the same eager call
                calls[EAGER] = lambda p=problem: differentiate(p, "auto")
            ms = interleaved_ms(calls, rounds)
            ms.setdefault(EAGER, ms[COMPILED])
            out.append((name, n, ms[PLAIN], ms[EAGER], ms[COMPILED]))
            print(f"{name:20s} N={n:>9,} ({ran}; build and first call {first:.1f} s) evaluate "
                  f"{ms[PLAIN]:9.3f} ms  eager {ms[EAGER] / ms[PLAIN]:5.2f}x  compiled "
                  f"{ms[COMPILED] / ms[PLAIN]:5.2f}x", flush=True)
    return out


def _positive(g: torch.Generator, n: int, d: int) -> torch.Tensor:
    return 0.5 + 4 * torch.rand(n, d, generator=g, dtype=torch.float64)


FORWARD_INPUTS: dict[str, Callable[[torch.Generator, int, int], torch.Tensor]] = {
    "black_scholes_call": lambda g, n, d: CASES[0].inputs(g, n),
    "softmax": lambda g, n, d: 2 * torch.randn(n, d, generator=g, dtype=torch.float64),
    "logistic_growth": lambda g, n, d: torch.stack([_uniform(g, n, 1, 90),
                                                    _uniform(g, n, 0, 10)], 1),
    "logistic_rk4": lambda g, n, d: torch.stack([_uniform(g, n, 1, 90),
                                                 _uniform(g, n, 0, 10)], 1),
}


def forward_markdown(rows: list[tuple[str, int, float, float, float]]) -> str:
    lines = [
        "## forward against plain evaluation, every routine (wrt all its parameters)",
        "",
        "strategy=auto (forward mode; `vmap-grad` for `gamma_survival`, which has no forward "
        "formula), eager and compiled (one graph for every N, built in the build process and "
        "loaded before the timing, as on a warm service); ratios to plain evaluation of the "
        "same batch. The service runs the "
        f"compiled graph for launches of at least {Settings().compile_min_samples:,} samples "
        "(DYDC_COMPILE_MIN_SAMPLES) and eager forward mode below that.",
        "",
        "| routine | N | evaluate | eager forward | compiled forward |",
        "|---|--:|--:|--:|--:|",
    ]
    for name, n, plain, eager, fast in rows:
        lines.append(f"| {name} | {_n(n)} | {plain:.3g} ms | {eager:.3g} ms "
                     f"({eager / plain:.2g}x) | {fast:.3g} ms ({fast / plain:.2g}x) |")
    return "\n".join(lines) + "\n"


def _n(n: int) -> str:
    return f"{n:,}".replace(",", " ") if n < 10_000 else f"1e{len(str(n)) - 1}"


def markdown(table: dict[str, dict[str, dict[int, float | None]]], sizes: tuple[int, ...],
             command: str) -> str:
    lines = [
        "# Strategies against plain evaluation",
        "",
        f"CPU, float64, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}; ms per call (median of "
        "interleaved rounds after a warm-up) and, in brackets, the ratio to plain evaluation "
        "of the same batch. "
        "'capped': N is over the strategy's default cap.",
        "",
        f"Command: `{command}`",
        "",
    ]
    for label, rows in table.items():
        lines += [f"## {label}", "",
                  "| strategy | " + " | ".join(f"N = {_n(n)}" for n in sizes) + " |",
                  "|---|" + "---:|" * len(sizes)]
        plain = rows[PLAIN]
        for name, cells in rows.items():
            out = []
            for n in sizes:
                ms = cells.get(n)
                if ms is None:
                    out.append("capped")
                elif name == PLAIN:
                    out.append(f"{ms:.3g} ms")
                else:
                    out.append(f"{ms:.3g} ms ({ms / plain[n]:.2g}x)")  # type: ignore[operator]
            lines.append(f"| {name} | " + " | ".join(out) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(table: dict[str, dict[str, dict[int, float | None]]], path: Path) -> None:
    from plots import pyplot  # (a script: bench/ is on its path)

    plt = pyplot()
    if plt is None:
        return

    fig, axes = plt.subplots(1, len(table), figsize=(6.5 * len(table), 5), squeeze=False)
    for ax, (label, rows) in zip(axes[0], table.items(), strict=True):
        for name, cells in rows.items():
            points = sorted((n, ms) for n, ms in cells.items() if ms is not None)
            if not points:
                continue
            style = {"color": "black", "linewidth": 2.5} if name == PLAIN else {}
            ax.loglog(*zip(*points, strict=True), marker="o", label=name, **style)
        ax.set_title(label)
        ax.set_xlabel("N (samples)")
        ax.set_ylabel("ms per call (median)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(f"dydc strategies vs plain evaluation, CPU float64, "
                 f"{torch.get_num_threads()} threads")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--rounds", type=int, default=9,
                        help="timed calls of each strategy per N (the median is reported)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--forward-rounds", type=int, default=5,
                        help="timed calls per cell of the every-routine forward table")
    parser.add_argument("--skip-forward-table", action="store_true",
                        help="only the strategy tables")
    args = parser.parse_args()
    warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script, inside forward AD
    torch.manual_seed(0)
    sizes = tuple(args.sizes)
    table = run(sizes, args.rounds)
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python " + " ".join(["bench/bench_strategies.py", *sys.argv[1:]])
    doc = markdown(table, sizes, command)
    if not args.skip_forward_table:
        doc += "\n" + forward_markdown(forward_table(args.forward_rounds))
    (args.out / "strategies.md").write_text(doc)
    plot(table, args.out / "strategies.png")
    print(f"wrote {args.out / 'strategies.md'} and {args.out / 'strategies.png'}")


if __name__ == "__main__":
    main()
