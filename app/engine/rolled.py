"""Forward mode for routines with a long loop: the unrolled loop rolled back into one step.

Tracing a routine unrolls its Python loops: ``logistic_rk4``'s 200 RK4 steps trace to 49,614
operations in forward mode, which took 60 s to trace and which torch.compile had not finished
with after 5 minutes. But the steps are the same operations on new values. So here:

1. The routine's *values* alone are traced (vmap, no jvp: 9,612 operations, 5 s), at the
   batch size :data:`~app.engine.compiled.TRACE_N` like the compiled path's graphs.
2. :func:`find_loop` looks for a run of identical segments in that graph: the same
   operations, each reading the segment before it or values defined before the run.
3. One segment becomes a graph of its own, the *step*; its forward mode (one jvp per
   parameter) is traced and compiled: a few hundred operations, one fused loop over samples.
4. A launch runs what comes before the loop and after it operation by operation in eager
   forward mode (a few dozen operations), and calls the compiled step once per iteration.

Nothing here knows HTTP, queues or metrics: :class:`~app.engine.compiled.CompiledForward`
decides when to use it and checks its numbers against eager forward mode like any graph.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.func import jvp
from torch.fx import Graph, GraphModule, Node
from torch.utils import _pytree as pytree

from app.engine.tracing import example, trace

__all__ = ["Loop", "RolledForward", "find_loop"]

MIN_COUNT = 8  # fewer repeats than this are left unrolled
MIN_SHARE = 0.5  # nor a loop that is less than this share of the graph
MAX_PERIOD = 4096  # operations in one step, at most

_Forward = Callable[..., tuple[Tensor, ...]]


@dataclass(frozen=True)
class Loop:
    """``count`` segments of ``period`` operations each, from operation ``start`` (indices
    among the graph's call_function nodes, in order)."""

    start: int
    period: int
    count: int


def _targets(calls: Sequence[Node]) -> np.ndarray:
    ids: dict[Any, int] = {}
    return np.array([ids.setdefault(n.target, len(ids)) for n in calls], dtype=np.int64)


def _longest_run(equal: np.ndarray) -> tuple[int, int]:
    """(start, length) of the longest run of True."""
    if not equal.any():
        return 0, 0
    padded = np.concatenate([[False], equal, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    starts, ends = edges[::2], edges[1::2]
    best = int(np.argmax(ends - starts))
    return int(starts[best]), int(ends[best] - starts[best])


class _Match:
    """Whether segment j + 1 of a candidate loop repeats segment j: the same operation at the
    same place, with arguments that are the same constants, the same value from before the
    loop (an invariant), or the value one period later (segment j's own, or segment j - 1's,
    which the step then carries). Segment 0 may read a value from before the loop where
    segment 1 reads one of segment 0's: the carried value's initial value."""

    def __init__(self, calls: Sequence[Node], start: int, period: int):
        self.pos = {n: i for i, n in enumerate(calls)}
        self.calls, self.start, self.period = calls, start, period

    def _before(self, n: Node) -> bool:
        i = self.pos.get(n)
        return i is None or i < self.start

    def args(self, a: Any, b: Any, lo: int) -> bool:
        """Arguments a of an operation in the segment starting at ``lo``, b of its repeat."""
        if isinstance(a, Node) or isinstance(b, Node):
            if not (isinstance(a, Node) and isinstance(b, Node)):
                return False
            if a is b:
                return self._before(a)
            pa, pb = self.pos.get(a), self.pos.get(b)
            if pb is None or not lo <= pb < lo + 2 * self.period:
                return False  # the repeat reads its own segment or the one before only
            if lo == self.start and self._before(a):
                return pb < lo + self.period  # an initial value, then segment 0's
            return pa is not None and pb - pa == self.period
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            return (type(a) is type(b) and len(a) == len(b)
                    and all(self.args(x, y, lo) for x, y in zip(a, b, strict=True)))
        if isinstance(a, dict) and isinstance(b, dict):
            return a.keys() == b.keys() and all(self.args(a[k], b[k], lo) for k in a)
        return type(a) is type(b) and a == b

    def segment(self, j: int) -> bool:
        """Segment j + 1 repeats segment j, and segment j's values are read by segments j
        and j + 1 only."""
        lo = self.start + j * self.period
        for i in range(lo, lo + self.period):
            a, b = self.calls[i], self.calls[i + self.period]
            if a.target != b.target or not self.args(a.args, b.args, lo):
                return False
            if not self.args(a.kwargs, b.kwargs, lo):
                return False
            if any(self.pos.get(u, -1) >= lo + 2 * self.period or u.op == "output"
                   for u in a.users):
                return False
        return True


def find_loop(graph: Graph, min_count: int = MIN_COUNT) -> Loop | None:
    """The longest run of repeated segments in the graph, if it is a loop worth rolling."""
    calls = [n for n in graph.nodes if n.op == "call_function"]
    targets = _targets(calls)
    best: tuple[int, int, int] = (0, 0, 0)  # covered, start, period
    for period in range(1, min(MAX_PERIOD, len(calls) // min_count) + 1):
        start, length = _longest_run(targets[:-period] == targets[period:])
        if length + period > best[0]:
            best = (length + period, start, period)
    covered, start, period = best
    if covered < MIN_SHARE * len(calls):
        return None
    count = covered // period
    # the run of equal operations may begin inside the loop's first step or before it: take
    # the first start from which segments repeat structurally
    for first in range(start, start + period):
        match = _Match(calls, first, period)
        n = 0
        while first + (n + 2) * period <= len(calls) and match.segment(n):
            n += 1
        if n + 1 >= min_count and (n + 1) * period >= MIN_SHARE * len(calls):
            return Loop(first, period, n + 1)
        if n + 1 >= count - 1:  # the best this candidate gives
            break
    return None


@dataclass(frozen=True)
class _Step:
    """One segment as a graph: its inputs are the invariants, then the carried values; its
    outputs are the values at ``outputs`` (offsets into the segment)."""

    module: GraphModule
    invariants: tuple[Node, ...]  # nodes before the loop
    carried: tuple[int, ...]  # offsets read by the next segment, in input order
    initial: tuple[Node, ...]  # the nodes before the loop that the first segment reads there
    outputs: tuple[int, ...]  # offsets: the carried ones first, then those read after the loop


def _step(calls: Sequence[Node], loop: Loop) -> _Step:
    p, s0 = loop.period, loop.start
    first = calls[s0:s0 + p]
    second = calls[s0 + p:s0 + 2 * p]
    pos = {n: i for i, n in enumerate(calls)}
    invariants: dict[Node, None] = {}
    initial: dict[int, Node] = {}  # carried offset -> the value before the loop

    def pair(a: Any, b: Any) -> None:
        if isinstance(a, Node):
            if a is b and pos.get(a, -1) < s0:
                invariants[a] = None
            elif pos.get(a, -1) < s0:  # read from before the loop now, from the loop later
                initial[pos[b] - s0] = a
            return
        if isinstance(a, (list, tuple)):
            for x, y in zip(a, b, strict=True):
                pair(x, y)
        elif isinstance(a, dict):
            for k in a:
                pair(a[k], b[k])

    for a, b in zip(first, second, strict=True):
        pair(a.args, b.args)
        pair(a.kwargs, b.kwargs)
    carried = tuple(sorted(initial))
    last = calls[s0 + (loop.count - 1) * p:s0 + loop.count * p]
    end = s0 + loop.count * p
    read_after = [q for q, n in enumerate(last)
                  if any(pos.get(u, len(calls)) >= end for u in n.users)]
    outputs = carried + tuple(q for q in read_after if q not in initial)

    graph = Graph()
    inputs = {n: graph.placeholder(f"inv{i}") for i, n in enumerate(invariants)}
    slots = {q: graph.placeholder(f"carried{q}") for q in carried}
    env: dict[Node, Node] = {}

    def remap(a: Any, b: Any) -> Any:
        """Segment 0's argument a as the step reads it, told apart by segment 1's b: two
        carried values may start from the same value before the loop."""
        if isinstance(a, Node):
            if a in env:
                return env[a]
            return inputs[a] if a is b else slots[pos[b] - s0]
        if isinstance(a, (list, tuple)):
            return type(a)(remap(x, y) for x, y in zip(a, b, strict=True))
        if isinstance(a, dict):
            return {k: remap(a[k], b[k]) for k in a}
        return a

    for a, b in zip(first, second, strict=True):
        env[a] = graph.create_node(a.op, a.target, remap(a.args, b.args),
                                   remap(a.kwargs, b.kwargs), a.name)
    graph.output(tuple(env[first[q]] for q in outputs))
    for n in invariants:
        if not isinstance(n.meta.get("val"), Tensor):
            raise ValueError(f"loop invariant {n.name} is not a tensor")
    return _Step(GraphModule(torch.nn.Module(), graph), tuple(invariants), carried,
                 tuple(initial[q] for q in carried), outputs)


class RolledForward:
    """Forward mode of a routine whose values graph ``gm`` holds ``loop``: called with the
    inputs as columns (D, N) and the parameters (named in ``names``, in the graph's input
    order), it returns the values and the tangent for each parameter in ``wrt``."""

    def __init__(self, gm: GraphModule, loop: Loop, names: tuple[str, ...],
                 wrt: tuple[str, ...]):
        calls = [n for n in gm.graph.nodes if n.op == "call_function"]
        self.loop, self.names, self.wrt = loop, names, wrt
        self.step = _step(calls, loop)
        end = loop.start + loop.count * loop.period
        self.entry = calls[loop.start]
        inside = set(calls[loop.start:end])
        nodes = list(gm.graph.nodes)
        self.placeholders = [n for n in nodes if n.op == "placeholder"]
        # what a call runs: the operations around the loop, and the loop where it begins
        self.plan = [n for n in calls if n is self.entry or n not in inside]
        self.output = next(n for n in nodes if n.op == "output").args[0]
        last = calls[end - loop.period:end]
        self.results = tuple(last[q] for q in self.step.outputs)
        first = calls[loop.start:loop.start + loop.period]
        for q, initial in zip(self.step.carried, self.step.initial, strict=True):
            if initial.meta["val"].shape != first[q].meta["val"].shape:
                raise ValueError("a carried value changes shape in the loop")
        self._step_forward: _Forward | None = None
        self._with_tangent: tuple[tuple[bool, ...], ...] | None = None

    def __call__(self, columns: Tensor, params: dict[str, Tensor]) -> tuple[Tensor, ...]:
        values: dict[Node, Any] = dict(zip(self.placeholders,
                                           (columns, *(params[k] for k in self.names)),
                                           strict=True))
        tangents: dict[Node, dict[str, Any]] = {
            n: {name: torch.ones_like(params[name])}
            for n, name in zip(self.placeholders[1:], self.names, strict=True)
            if name in self.wrt}
        for node in self.plan:
            if node is self.entry:
                self._run_loop(values, tangents)
            else:
                _eager_forward(node, values, tangents, self.wrt)
        (result,) = pytree.tree_leaves(self.output)
        return (values[result], *(_tangent(values, tangents, result, w) for w in self.wrt))

    def _run_loop(self, values: dict[Node, Any], tangents: dict[Node, dict[str, Any]]) -> None:
        step = self.step
        inv = [values[n] for n in step.invariants]
        with_tangent = tuple(tuple(w in tangents.get(n, {}) for n in step.invariants)
                             for w in self.wrt)
        if self._step_forward is None or self._with_tangent != with_tangent:
            self._step_forward = self._compile(with_tangent)
            self._with_tangent = with_tangent
        carried = [values[n] for n in step.initial]
        carried_t = [[_tangent(values, tangents, n, w) for n in step.initial] for w in self.wrt]
        inv_t = [[tangents[n][w] for n, has in zip(step.invariants, mask, strict=True) if has]
                 for w, mask in zip(self.wrt, with_tangent, strict=True)]
        m, k = len(step.carried), len(step.outputs)
        outs: tuple[Tensor, ...] = ()
        for _ in range(self.loop.count):
            flat = self._step_forward(*inv, *carried,
                                      *(x for it, ct in zip(inv_t, carried_t, strict=True)
                                        for x in (*it, *ct)))
            outs = flat
            carried = list(flat[:m])
            carried_t = [list(flat[k + i * k:k + i * k + m]) for i in range(len(self.wrt))]
        for j, node in enumerate(self.results):
            values[node] = outs[j]
            tangents[node] = {w: outs[k + i * k + j] for i, w in enumerate(self.wrt)}

    def _compile(self, with_tangent: tuple[tuple[bool, ...], ...]) -> _Forward:
        """The step's forward mode, one jvp per parameter, traced and compiled."""
        step = self.step
        n_inv, n_car = len(step.invariants), len(step.carried)

        def forward(*flat: Tensor) -> tuple[Tensor, ...]:
            inv, carried, rest = flat[:n_inv], flat[n_inv:n_inv + n_car], flat[n_inv + n_car:]
            outs: tuple[Tensor, ...] = ()
            pushed: list[Tensor] = []
            for mask in with_tangent:
                varying = [i for i, has in enumerate(mask) if has]
                inv_t, rest = rest[:len(varying)], rest[len(varying):]
                car_t, rest = rest[:n_car], rest[n_car:]

                def f(*xs: Tensor, varying: list[int] = varying) -> tuple[Tensor, ...]:
                    full = list(inv)
                    for i, x in zip(varying, xs, strict=False):
                        full[i] = x
                    return tuple(step.module(*full, *xs[len(varying):]))

                outs, t = jvp(f, (*(inv[i] for i in varying), *carried),
                              (*inv_t, *car_t))[:2]
                pushed.extend(t)
            return (*outs, *pushed)

        inv_ex = [example(n) for n in step.invariants]
        car_ex = [example(n) for n in step.initial]
        tan_ex = [x for mask in with_tangent
                  for x in (*(torch.empty_like(e)  # distinct: make_fx maps by identity
                              for e, has in zip(inv_ex, mask, strict=True) if has),
                            *(torch.empty_like(c) for c in car_ex))]
        graph = trace(forward, *inv_ex, *car_ex, *tan_ex)
        compiled: _Forward = torch.compile(graph, dynamic=True, fullgraph=True)
        return compiled


def _tangent(values: dict[Node, Any], tangents: dict[Node, dict[str, Any]], node: Node,
             w: str) -> Tensor:
    """The node's tangent for w; zeros for a value that does not move with w."""
    t: Tensor | None = tangents.get(node, {}).get(w)
    return torch.zeros_like(values[node]) if t is None else t


def _eager_forward(node: Node, values: dict[Node, Any], tangents: dict[Node, dict[str, Any]],
                   wrt: tuple[str, ...]) -> None:
    """One operation outside the loop, with its tangents (jvp of that operation alone)."""
    if node.target is operator.getitem:  # one value of an operation with several
        source, index = node.args
        assert isinstance(source, Node)
        values[node] = values[source][index]
        tangents[node] = {w: t[index] for w, t in tangents.get(source, {}).items()}
        return
    flat, spec = pytree.tree_flatten((node.args, node.kwargs))
    resolved = [values[x] if isinstance(x, Node) else x for x in flat]
    args, kwargs = pytree.tree_unflatten(resolved, spec)
    target: Callable[..., Any] = node.target  # type: ignore[assignment]  # call_function
    values[node] = target(*args, **kwargs)
    pushed: dict[str, Any] = {}
    for w in wrt:
        moving = [i for i, x in enumerate(flat) if isinstance(x, Node) and w in tangents.get(x, {})]
        if not moving:
            continue

        def f(*xs: Tensor, moving: list[int] = moving) -> Any:
            args = list(resolved)
            for i, x in zip(moving, xs, strict=True):
                args[i] = x
            a, k = pytree.tree_unflatten(args, spec)
            return target(*a, **k)

        pushed[w] = jvp(f, tuple(resolved[i] for i in moving),
                        tuple(tangents[flat[i]][w] for i in moving))[1]
    if pushed:
        tangents[node] = pushed
