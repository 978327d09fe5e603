"""Graphs of plain tensor operations, traced once and valid for any batch size.

``vmap`` fixes the batch size of what it traces, even under symbolic tracing, so a routine is
traced with fake tensors at a batch size that no routine's own shapes contain,
:data:`TRACE_N` (a prime), and every shape argument that is a multiple of it is then replaced
by the same multiple of the inputs' own size.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.fx import GraphModule, Node
from torch.fx.experimental.proxy_tensor import make_fx

__all__ = ["TRACE_N", "any_batch_size", "example", "trace"]

TRACE_N = 104_729  # the 10,000th prime: a batch size that no routine's own shapes contain


def example(node: Node) -> Tensor:
    """An empty tensor like the value a traced node had (shape, dtype, device)."""
    val = node.meta["val"]
    return torch.empty(tuple(val.shape), dtype=val.dtype, device=val.device)


def trace(fn: Callable[..., Any], *args: Any) -> GraphModule:
    """``fn`` traced on fake tensors like ``args`` (tensors, or pytrees of them, with batch size
    TRACE_N), for any batch size."""
    # real tensors the function closes over (a routine's constants) become graph constants
    return any_batch_size(make_fx(fn, tracing_mode="fake", _allow_non_fake_inputs=True)(*args))


def any_batch_size(gm: GraphModule) -> GraphModule:
    """The traced graph with every shape argument k * TRACE_N replaced by k * N, N read from
    the first input that has it, and what the trace left unused removed."""
    graph = gm.graph
    source, dim = next((node, list(node.meta["val"].shape).index(TRACE_N))
                       for node in graph.nodes if node.op == "placeholder"
                       and isinstance(node.meta.get("val"), Tensor)
                       and TRACE_N in node.meta["val"].shape)
    last = [node for node in graph.nodes if node.op == "placeholder"][-1]
    with graph.inserting_after(last):
        n = graph.call_function(torch.ops.aten.sym_size.int, (source, dim))
    scaled: dict[int, Node] = {1: n}

    def size(k: int) -> Node:
        if k not in scaled:
            with graph.inserting_after(n):
                scaled[k] = graph.call_function(operator.mul, (n, k))
        return scaled[k]

    def replace(arg: Any) -> Any:
        if isinstance(arg, (list, tuple)):
            return type(arg)(replace(a) for a in arg)
        if type(arg) is int and arg and arg % TRACE_N == 0:
            return size(arg // TRACE_N)
        return arg

    for node in list(graph.nodes):
        if node.op == "call_function" and node not in scaled.values():
            node.args = replace(node.args)
            node.kwargs = {k: replace(v) for k, v in node.kwargs.items()}
    for node in list(graph.nodes):  # shape checks vmap leaves behind, returning bools
        if (node.op == "call_function" and not node.users
                and node.target is torch.ops.aten.is_same_size.default):
            graph.erase_node(node)
    graph.eliminate_dead_code()
    gm.recompile()
    return gm
