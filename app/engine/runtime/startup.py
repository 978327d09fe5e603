"""Setting up the process for the engine, once, before it serves: torch's lazily loaded
extensions, glibc's allocator, and a warm-up run (and build) of every routine."""

from __future__ import annotations

import ctypes
import logging
import sys
import warnings
from collections.abc import Mapping

import torch

from app.engine.differentiation import zero_tangents
from app.engine.differentiation.differentiate import TRANSFORMS_LOCK, differentiate
from app.engine.differentiation.problem import Problem
from app.engine.runtime.admission import CostModel
from app.engine.runtime.executor import Executor
from app.engine.runtime.validation import DTYPES
from routines import Routine

__all__ = ["cache_host_allocations", "load_torch_extensions", "warm_up"]

log = logging.getLogger(__name__)


def load_torch_extensions(compiled: bool = False) -> None:
    """Import what torch loads lazily on the first dual number and the first compiled graph,
    on the calling (main) thread: those imports warn (torch.jit.script and script_method are
    deprecated), and a worker thread must not touch the process-wide warning filters to hide
    them. With ``compiled``, also what loading a built graph first does: its imports (2.4 s
    here) and the probe of the CPU's vector instructions (0.8 s, compiling with g++), which
    would otherwise stall the service when the first graph is loaded. And the Meta kernels
    that size forward mode's zero tangents without Python's reference kernels
    (app.engine.differentiation.zero_tangents)."""
    zero_tangents.install()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import torch._decomp.decompositions_for_jvp
        import torch.fx.experimental.optimization  # Inductor's, via mkldnn

        if compiled:
            import torch._inductor.package  # noqa: F401
            from torch._inductor.cpu_vec_isa import pick_vec_isa

            pick_vec_isa()  # cached for the process


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def cache_host_allocations() -> bool:
    """Keep large freed host buffers in the process for the next tensor.

    glibc serves every block over 128 KiB with a fresh mmap and unmaps it on free, so each
    large tensor (8 MB for a million float64 samples) pays a page fault per 4 KiB page when
    it is first written: on a virtual machine that made allocation a large part of a launch,
    and forward mode, which allocates tangents beside values, paid it most (measured: eager
    forward on linear at N = 1e6 went from 6.2 ms to 1.8 ms). This is the host-side
    counterpart of CUDA's caching allocator. The cost is memory: the heap keeps its high-water
    mark. Returns False where it does not apply (not glibc).
    """
    if sys.platform != "linux":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    # the largest mmap threshold glibc accepts on 64-bit (32 MiB); trim only above 1 GiB free
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)) and bool(
        mallopt(_M_TRIM_THRESHOLD, 2**30))


def warm_up(routines: Mapping[str, Routine], executor: Executor,
            costs: CostModel | None = None, compile: bool = False) -> None:
    """Run every routine once on the executor's device, as strategy=auto would, so the first
    request pays no one-off costs, and measure its cost there for admission (``costs``); with
    ``compile``, also build (or load from the cache directory) every routine's compiled
    forward mode for one large request in each dtype (all parameters, shared), at order 1 and
    order 2 (no cross terms), and return once they are loaded or refused. Launches run under
    the transforms lock: another worker may already be serving; the builds run in their own
    process."""
    device = executor.device
    compiled = executor.compiled if compile else None
    large: list[Problem] = []
    for r in routines.values():
        params = {p.name: torch.tensor(p.default, dtype=torch.float64, device=device)
                  for p in r.params}
        x = torch.ones(2, len(r.inputs), dtype=torch.float64, device=device)
        try:
            with TRANSFORMS_LOCK:
                differentiate(Problem(r, x, params, r.param_names), "auto")
                if costs is not None:
                    costs.measure(r, device)
        except Exception as exc:  # a routine undefined at ones is not a broken device
            log.warning("warm-up of routine %s skipped: %s", r.name, exc)
            continue
        if compiled is None:
            continue
        n = compiled.min_samples
        # rows near ones (where the routine was just run), not all equal
        rows = 1 + 0.25 * torch.rand(n, len(r.inputs), dtype=torch.float64,
                                     generator=torch.Generator().manual_seed(0))
        for dtype in DTYPES.values():
            large.append(Problem(r, rows.to(device, dtype),
                                 {k: v.to(dtype) for k, v in params.items()}, r.param_names))
    if compiled is not None:
        compiled.warm_up(large, device, orders=(1, 2))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
