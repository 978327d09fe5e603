"""The benchmarks' plots: pyplot on a file backend, or None, said in one line, where
matplotlib (the ``bench`` extra) is not installed, so that a benchmark without it still
writes its tables instead of failing after its run."""

from __future__ import annotations

from typing import Any


def pyplot() -> Any | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (DYDC_EXTRAS=test,bench bash "
              "scripts/install.sh)")
        return None
    return plt
