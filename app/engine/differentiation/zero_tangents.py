"""The sizes of forward mode's zero tangents, found without PyTorch's Python reference kernels.

Forward mode gives an operand without a tangent (a constant, a Python number, an input or a
parameter not differentiated) an efficient zero tensor, and ATen's ZeroTensor kernels of add,
sub, mul and div find the size and dtype of their answer by calling the same operator on the
meta device. ``torch._meta_registrations`` registers ``torch._refs``' Python implementations as
those operators' Meta kernels (they serve symbolic sizes under ``torch.export``), in front of
the C++ ones, so each such operation runs about 200 µs of Python holding the GIL. Measured on
this project's machine (torch 2.13, CPU, 4 samples): ``x * K`` under ``torch.func.jvp`` 230 µs
an operation against 7 µs for ``x * x``, 1,100 µs at order 2; ``logistic_rk4`` at order 2
5.9 s. No setting of PyTorch turns that off (pytorch/pytorch#69687 added the zero tensors), and
the C++ kernel the Python one displaced cannot be reached again without undoing every Python
Meta kernel, which tracing needs.

:func:`install` puts a Meta kernel in front of those four operators that answers the plain
case itself -- two plain meta tensors of one floating dtype and concrete sizes, each contiguous
or of at most one dimension, no dispatch mode active: a contiguous tensor of the broadcast size
in that dtype, what the reference kernel computes (tests/test_zero_tangents.py compares them) --
and hands every other call (fake tensors and symbolic sizes under tracing, strided layouts,
mixed dtypes, Python numbers as operands) to the reference kernel it displaced, unchanged.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch._decomp import global_decomposition_table

OPERATORS = ("add.Tensor", "sub.Tensor", "mul.Tensor", "div.Tensor")

_library: torch.library.Library | None = None
_lock = threading.Lock()


def _reference(name: str) -> Callable[..., Any]:
    """The Meta kernel ``torch._meta_registrations`` chose for ``aten.<name>`` (its order of
    precedence: meta, then post-autograd, then pre-autograd decompositions)."""
    packet, overload = name.split(".")
    op = getattr(getattr(torch.ops.aten, packet), overload)
    for table in ("meta", "post_autograd", "pre_autograd"):
        if op in global_decomposition_table[table]:
            return global_decomposition_table[table][op]
    raise LookupError(f"torch registers no Python Meta kernel for aten.{name}")


def plain_shape(a: Any, b: Any) -> list[int] | None:
    """The broadcast size of ``a`` and ``b`` where the answer is a contiguous tensor in their
    one floating dtype; None where the reference kernel must decide."""
    if type(a) is not torch.Tensor or type(b) is not torch.Tensor:
        return None  # a Python number, or a tensor subclass (a fake tensor under tracing)
    if a.dtype != b.dtype or not a.dtype.is_floating_point or a.device != b.device:
        return None
    if torch._C._len_torch_dispatch_stack():  # a mode (fake tensors, tracing) decides
        return None
    for t in (a, b):
        if t.dim() > 1 and not t.is_contiguous():
            return None
        if any(type(s) is not int for s in t.shape):
            return None
    if a.shape == b.shape or b.dim() == 0:
        return list(a.shape)
    if a.dim() == 0:
        return list(b.shape)
    return list(torch.broadcast_shapes(a.shape, b.shape))  # type: ignore[no-untyped-call]


def _kernel(name: str) -> Callable[..., Any]:
    reference = _reference(name)

    def meta(a: Any, b: Any, **kwargs: Any) -> Any:
        shape = plain_shape(a, b)
        if shape is None:
            return reference(a, b, **kwargs)
        return torch.empty(shape, dtype=a.dtype, device=a.device)

    meta.__name__ = f"{name.replace('.', '_')}_zero_tangent_meta"
    return meta


def install() -> None:
    """Put the kernels in front of the references, once per process (idempotent, any
    thread)."""
    global _library
    with _lock:
        if _library is not None:
            return
        library = torch.library.Library("aten", "IMPL", "Meta")  # type: ignore[no-untyped-call]
        with warnings.catch_warnings():
            # "Overriding a previously registered kernel": the point
            warnings.simplefilter("ignore", UserWarning)
            for name in OPERATORS:
                library.impl(name, _kernel(name))  # type: ignore[no-untyped-call]
        _library = library


def installed() -> bool:
    return _library is not None
