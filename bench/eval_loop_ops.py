"""Can PyTorch's own loop tools do app.engine.compiled.rolled's job under jvp and vmap?

Not a test. Run from the repository root: ``.venv/bin/python bench/eval_loop_ops.py``.

logistic_rk4's 200 RK4 steps written with ``torch._higher_order_ops.scan`` and with
``torch.compiler.nested_compile_region``, each pushed through ``jvp(vmap(...))`` three ways:
eagerly, traced by ``make_fx`` (what app.engine.compiled.builds does), and through
``torch.compile``. Prints one line per attempt: ok or the error, and the seconds it took. The result
is recorded in app/engine/compiled/rolled.py's docstring.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import Tensor
from torch._higher_order_ops.scan import scan
from torch.func import jvp, vmap
from torch.fx.experimental.proxy_tensor import make_fx

STEPS = 200


def rate(n: Tensor, r: Tensor, k: Tensor) -> Tensor:
    return r * n * (1 - n / k)


def rk4_step(n: Tensor, h: Tensor, r: Tensor, k: Tensor) -> Tensor:
    k1 = rate(n, r, k)
    k2 = rate(n + 0.5 * h * k1, r, k)
    k3 = rate(n + 0.5 * h * k2, r, k)
    k4 = rate(n + h * k3, r, k)
    return n + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


def with_scan(n0: Tensor, t: Tensor, r: Tensor, k: Tensor) -> Tensor:
    h = t / STEPS

    def combine(n: Tensor, _: Tensor) -> tuple[Tensor, Tensor]:
        nxt = rk4_step(n, h, r, k)
        return nxt, nxt.new_zeros(())

    final, _ = scan(combine, n0, torch.zeros(STEPS, dtype=n0.dtype))
    return final


@torch.compiler.nested_compile_region
def step_region(n: Tensor, h: Tensor, r: Tensor, k: Tensor) -> Tensor:
    return rk4_step(n, h, r, k)


def with_region(n0: Tensor, t: Tensor, r: Tensor, k: Tensor) -> Tensor:
    h, n = t / STEPS, n0
    for _ in range(STEPS):
        n = step_region(n, h, r, k)
    return n


def forward(f: Callable[..., Tensor]) -> Callable[..., tuple[Tensor, Tensor]]:
    """Values and d/dr over the batch: jvp of vmap, as the service's forward mode."""

    def run(n0: Tensor, t: Tensor, r: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        batched = vmap(f, in_dims=(0, 0, None, None))
        out: tuple[Tensor, Tensor] = jvp(lambda r_: batched(n0, t, r_, k), (r,),
                                         (torch.ones_like(r),))
        return out

    return run


def main() -> None:
    x = torch.rand(1000, 2, dtype=torch.float64) + 0.5
    r, k = torch.tensor(0.5, dtype=torch.float64), torch.tensor(100.0, dtype=torch.float64)
    args = (x[:, 0], x[:, 1], r, k)
    for name, f in (("scan", with_scan), ("nested_compile_region", with_region)):
        for mode in ("eager", "make_fx", "torch.compile"):
            started, extra = time.perf_counter(), ""
            try:
                g = forward(f)
                if mode == "make_fx":
                    gm = make_fx(g, tracing_mode="fake")(*args)
                    gm(*args)
                    extra = f"{sum(n.op == 'call_function' for n in gm.graph.nodes)} operations"
                elif mode == "torch.compile":
                    torch.compile(g, dynamic=True)(*args)
                else:
                    g(*args)
                result = "ok"
            except Exception as exc:
                result = f"FAIL {type(exc).__name__}: {str(exc).splitlines()[0][:150]}"
            print(f"{name:22s} {mode:14s} {time.perf_counter() - started:6.1f} s {result} "
                  f"{extra}", flush=True)


if __name__ == "__main__":
    main()
