"""Whether a compiled graph gives eager forward mode's numbers: each output column against its
own scale.

A single tolerance for every number (``allclose`` with ``atol``) passes any output smaller
than ``atol``: a graph 50% wrong on outputs of 1e-10 was served. Here each column of each
output (values, and every tangent) is compared with the eager column relative to that column's
largest magnitude, so an output of 1e-10 is checked as strictly as an output of 1. Where eager
gives a non-finite number the graph must give one too.

The price: an output computed by cancellation (a difference of two numbers of order 1 that is
of order 1e-10) carries rounding errors that are large against its own scale, and such a graph
is refused. That errs on the safe side (eager forward mode serves it).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["RTOL", "mismatch"]

RTOL: dict[torch.dtype, float] = {torch.float64: 1e-9, torch.float32: 1e-4}


def mismatch(got: Sequence[Tensor], want: Sequence[Tensor], names: Sequence[str]) -> str | None:
    """None when every column of ``got`` matches ``want``; else what differs, in words."""
    for name, g, w in zip(names, got, want, strict=True):
        if g.shape != w.shape:
            return f"{name} has shape {tuple(g.shape)}, eager forward mode {tuple(w.shape)}"
        rtol = RTOL.get(w.dtype, 1e-4)
        tiny = torch.finfo(w.dtype).tiny
        g2, w2 = g.detach().reshape(len(g), -1).double(), w.detach().reshape(len(w), -1).double()
        for m in range(w2.shape[1]):
            gc, wc = g2[:, m], w2[:, m]
            finite = torch.isfinite(wc)
            if not torch.equal(finite, torch.isfinite(gc)):
                return f"{name}[:, {m}] is not finite where eager forward mode is, or the reverse"
            if not bool(finite.any()):
                continue
            scale = max(float(wc[finite].abs().max()), tiny)
            error = float((gc[finite] - wc[finite]).abs().max())
            if not error <= rtol * scale:
                return (f"{name}[:, {m}] differs from eager forward mode by {error:.3g} on a "
                        f"scale of {scale:.3g} (relative tolerance {rtol:g})")
    return None
