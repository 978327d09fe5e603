"""Second order, input sensitivities and per-sample parameters against plain evaluation, on
the CPU, in float64, as the service runs them (its host allocator settings, compiled forward
mode of both orders for launches of DYDC_COMPILE_MIN_SAMPLES and more).

    .venv/bin/python bench/bench_second_order.py

Writes bench/results/second_order.md. Each cell is the median of interleaved rounds after a
warm-up call (which pays any compile), as in bench_strategies.py. The issue's targets:

- order 2, one parameter, ``forward``: at most 4x evaluation at N = 1e5, 3x at N = 1e6;
- delta (an input feature) costs the same as a parameter's derivative (vega);
- per-sample sigma at N = 1e6: at most 1.5x the shared-sigma time.
"""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_strategies import interleaved_ms

from app.config import Settings
from app.engine import CompiledForward, cache_host_allocations
from app.engine.differentiation.input_sensitivities import with_features_as_params
from app.engine.differentiation.strategies import Problem
from app.engine.runtime.executor import run_strategy
from routines import discover

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = (100_000, 1_000_000)
F64 = torch.float64
ORDER2 = "vega + volga (order 2, wrt sigma)"


def _inputs(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(n)
    return torch.stack([80 + 40 * torch.rand(n, generator=g, dtype=F64),
                        80 + 40 * torch.rand(n, generator=g, dtype=F64),
                        0.25 + 1.75 * torch.rand(n, generator=g, dtype=F64)], 1)


def run(rounds: int) -> list[tuple[int, dict[str, float]]]:
    settings = Settings()
    if settings.host_allocator_cache:
        cache_host_allocations()
    compiled = (CompiledForward(settings.compile_chunk, settings.compile_min_samples)
                if settings.compile else None)
    bs = discover()["black_scholes_call"]
    out = []
    for n in SIZES:
        x = _inputs(n)
        shared = {"sigma": torch.tensor(0.2, dtype=F64), "r": torch.tensor(0.05, dtype=F64)}
        sigmas = 0.1 + 0.5 * torch.rand(n, generator=torch.Generator().manual_seed(1),
                                        dtype=F64)
        per_sample = {**shared, "sigma": sigmas}

        def served(params: dict[str, torch.Tensor], wrt: tuple[str, ...], order: int = 1,
                   eager: bool = False, x: torch.Tensor = x) -> Callable[[], object]:
            def call() -> object:  # as compute._compute builds and runs the problem
                problem = with_features_as_params(Problem(bs, x, params, wrt))
                return run_strategy(problem, "forward", None if eager else compiled,
                                     order=order)
            return call

        plain = Problem(bs, x, shared, ("sigma",))
        calls: dict[str, Callable[[], object]] = {
            "evaluate": plain.evaluate,
            "vega (order 1, wrt sigma)": served(shared, ("sigma",)),
            "vega, eager": served(shared, ("sigma",), eager=True),
            "delta (order 1, wrt S)": served(shared, ("S",)),
            "delta, eager": served(shared, ("S",), eager=True),
            ORDER2: served(shared, ("sigma",), 2),
            "vega + volga, eager": served(shared, ("sigma",), 2, eager=True),
            "vega, per-sample sigma": served(per_sample, ("sigma",)),
            "vega + volga, per-sample sigma": served(per_sample, ("sigma",), 2),
        }
        times = interleaved_ms(calls, rounds)
        for name, ms in times.items():
            print(f"N={n:>9,} {name:36s} {ms:9.2f} ms {ms / times['evaluate']:6.2f}x",
                  flush=True)
        out.append((n, times))
    return out


def markdown(rows: list[tuple[int, dict[str, float]]], command: str) -> str:
    names = list(rows[0][1])
    lines = [
        "# Second order, input sensitivities and per-sample parameters",
        "",
        f"`{command}` on {platform.processor() or platform.machine()}, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads; black_scholes_call, float64, "
        "strategy forward as served; ms (median), and the ratio to evaluation.",
        "",
        "| case | " + " | ".join(f"N = {n:.0e}" for n, _ in rows) + " |",
        "|---|" + "---:|" * len(rows),
    ]
    for name in names:
        cells = [f"{t[name]:.1f} ({t[name] / t['evaluate']:.2f}x)" for _, t in rows]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    for n, t in rows:
        o2 = t[ORDER2] / t["evaluate"]
        target = 4 if n < 1_000_000 else 3
        lines.append(f"- N = {n:.0e}: order 2 is {o2:.2f}x evaluation (target at most {target}x): "
                     f"{'met' if o2 <= target else 'missed'}; delta / vega "
                     f"{t['delta (order 1, wrt S)'] / t['vega (order 1, wrt sigma)']:.2f}; "
                     f"per-sample / shared sigma "
                     f"{t['vega, per-sample sigma'] / t['vega (order 1, wrt sigma)']:.2f} "
                     f"(order 2: {t['vega + volga, per-sample sigma'] / t[ORDER2]:.2f})")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python bench/bench_second_order.py" + (
        f" --threads {args.threads}" if args.threads else "")
    RESULTS.mkdir(exist_ok=True)
    text = markdown(run(args.rounds), command)
    (RESULTS / "second_order.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
