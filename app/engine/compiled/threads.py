"""How many OpenMP threads a compiled launch on the CPU runs on: one below a grain of samples,
else the calling thread's own (torch's intra-op count, DYDC_TORCH_THREADS).

A CPU graph's kernels are OpenMP parallel regions sized at run time (builds.py, ``_package``).
A region wakes the other threads even for 16 samples, about 20 us each time; a rolled loop
(rolled.py) enters one per step, so ``logistic_rk4``'s 200 steps made a 16-sample launch take
15.1 ms against 9.0 ms serial (1e5 samples: 56 ms against 100 ms serial). ATen decides the same
thing per operation with a grain (``at::internal::GRAIN_SIZE``, 32,768 elements); Inductor's
generated code has no such test, and torch offers no per-thread setting (``torch.set_num_threads``
is process-wide), so this sets the calling thread's OpenMP count (``omp_set_num_threads``, a
per-thread value) around the launch, through the libgomp that torch loaded. Where it is not
found (another OpenMP runtime), launches keep the thread's count.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
from collections.abc import Iterator

import torch

__all__ = ["GRAIN", "threads_for"]

GRAIN = 32_768  # samples from which a launch runs in parallel (ATen's GRAIN_SIZE)


@functools.cache
def _gomp() -> ctypes.CDLL | None:
    """The libgomp already in the process (torch's), or None."""
    if not hasattr(os, "RTLD_NOLOAD"):
        return None
    try:  # only if loaded already: another copy would hold counts that no kernel reads
        # PyDLL: the calls keep the GIL. They take nanoseconds, and a CDLL call releases it,
        # so the device worker waited for the busy event loop's thread three times a launch
        gomp = ctypes.PyDLL("libgomp.so.1", mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
    except OSError:
        return None
    gomp.omp_get_max_threads.restype = ctypes.c_int
    gomp.omp_set_num_threads.argtypes = [ctypes.c_int]
    return gomp


@contextlib.contextmanager
def threads_for(samples: int, device: torch.device) -> Iterator[None]:
    """Around one launch of ``samples`` samples on ``device``: on the CPU, serial below
    :data:`GRAIN`."""
    gomp = _gomp() if samples < GRAIN and device.type == "cpu" else None
    if gomp is None:
        yield
        return
    before = gomp.omp_get_max_threads()
    if before == 1:
        yield
        return
    gomp.omp_set_num_threads(1)
    try:
        yield
    finally:
        gomp.omp_set_num_threads(before)
