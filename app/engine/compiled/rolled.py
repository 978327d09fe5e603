"""Forward mode for routines with a long loop: the unrolled loop rolled back into one step.

Tracing a routine unrolls its Python loops: ``logistic_rk4``'s 200 RK4 steps trace to 49,614
operations in forward mode, which took 60 s to trace and which torch.compile had not finished
with after 5 minutes. But the steps are the same operations on new values. So here:

1. The routine's *values* alone are traced (vmap, no jvp: 9,612 operations, 5 s), at the
   batch size :data:`~app.engine.compiled.forward.TRACE_N` like the compiled path's graphs.
2. :func:`find_loop` looks for a run of identical segments in that graph: the same
   operations, each reading the segment before it or values defined before the run.
3. One segment becomes a graph of its own, the *step*; its forward mode (one jvp per
   parameter) is traced and compiled: a few hundred operations, one fused loop over samples.
4. A launch runs what comes before the loop and after it operation by operation in eager
   forward mode (a few dozen operations), and calls the compiled step once per iteration.

Divisions in the step by a scalar from before the loop (a shared parameter: logistic_rk4's
``n / K``, four times a step and four more in the tangent) are multiplications by its
reciprocal in the compiled step (:func:`_by_reciprocals`): a division costs several times a
multiplication, and these were most of the step's time. ``x * (1 / s)`` is within about an ulp
of ``x / s`` while ``1 / s`` is a normal number; a launch whose divisor is not in that range
(:data:`SAFE_DIVISOR`) runs its loop's steps in eager forward mode instead.

Why hand-written: PyTorch 2.13's own tools for repeated blocks were tried for this job, on
logistic_rk4's 200 steps under ``jvp(vmap(...))`` at N = 1,000 (bench/eval_loop_ops.py,
``.venv/bin/python bench/eval_loop_ops.py``, run once on a 2-core CPU):

- ``torch._higher_order_ops.scan`` fails in all three ways it would be used: eagerly
  (UncapturedHigherOrderOpError: it runs only when torch.compile captures it whole), traced by
  ``make_fx`` ("Unsupported functorch tracing attempt": no vmap or jvp rule under tracing),
  and through ``torch.compile`` (AssertionError: expected a FakeTensor after unwrapping).
- ``torch.compiler.nested_compile_region`` runs eagerly (it does nothing there), and under
  ``make_fx`` it unrolls like plain Python: 65,419 operations in 258 s, the graph this module
  exists to avoid; through ``torch.compile`` of ``jvp(vmap(...))`` it failed (AssertionError:
  expected a FakeTensor). It only deduplicates compiled regions under Dynamo, which the
  ahead-of-time packages of app.engine.compiled.builds do not run at call time.

So the roller stays, for every loop; try the two again on a newer PyTorch.

Nothing here knows HTTP, queues or metrics: :class:`~app.engine.compiled.forward.CompiledForward`
and app.engine.compiled.builds decide when to use it and check its numbers against eager forward
mode like any graph.
"""

from __future__ import annotations

import functools
import math
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

from app.engine.compiled.tracing import example, trace

__all__ = ["Loop", "RolledForward", "find_loop"]

aten = torch.ops.aten

MIN_COUNT = 8  # fewer repeats than this are left unrolled
MIN_SHARE = 0.5  # nor a loop that is less than this share of the graph
MAX_PERIOD = 4096  # operations in one step, at most
# |s| in [1 / SAFE_DIVISOR, SAFE_DIVISOR]: 1 / s is a normal float64 (and float32 up to
# 2**126), so x * (1 / s) rounds like x / s up to about an ulp; 0, inf and nan also divide alike
SAFE_DIVISOR = {torch.float64: 2.0 ** 1021, torch.float32: 2.0 ** 125,
                torch.float16: 2.0 ** 13, torch.bfloat16: 2.0 ** 125}

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


class _Ref(int):
    """A value of the program: its slot (a graph input, a constant, an operation's result)."""


_Target = Any  # an OpOverload, an operator function, or (pickled) the name of an OpOverload


def _target_name(target: Any) -> Any:
    """What pickles of a target: OpOverloads (aten.mul.Tensor) do not, and go by name."""
    if isinstance(target, torch._ops.OpOverload):
        return f"{target.namespace}.{target._opname}.{target._overloadname}"
    return target


def _resolve(target: Any) -> Any:
    if isinstance(target, str):
        namespace, name, overload = target.split(".")
        return getattr(getattr(getattr(torch.ops, namespace), name), overload)
    return target


@dataclass(frozen=True)
class _Op:
    target: _Target
    args: Any  # pytrees with _Ref leaves for values
    kwargs: Any
    out: int


class RolledForward:
    """Forward mode of a routine whose values graph ``gm`` holds ``loop``: called with the
    inputs as columns (D, N) and the parameters (named in ``names``, in the graph's input
    order), it returns the values and the tangent for each parameter in ``wrt``.

    Once made it holds no graph, only a program over numbered values (the operations around
    the loop, and where the loop runs), so that it pickles: a build process makes it, and the
    service runs it with the step's compiled forward mode attached (:meth:`attach`).
    ``compile_step`` turns the step's traced forward mode into a callable (torch.compile by
    default; ahead-of-time compiled packages in app.engine.compiled.builds)."""

    def __init__(self, gm: GraphModule, loop: Loop, names: tuple[str, ...],
                 wrt: tuple[str, ...],
                 compile_step: Callable[[GraphModule, list[Tensor]], _Forward] | None = None):
        calls = [n for n in gm.graph.nodes if n.op == "call_function"]
        self.loop, self.names, self.wrt = loop, names, wrt
        self.step = _step(calls, loop)
        end = loop.start + loop.count * loop.period
        first = calls[loop.start:loop.start + loop.period]
        for q, initial in zip(self.step.carried, self.step.initial, strict=True):
            if initial.meta["val"].shape != first[q].meta["val"].shape:
                raise ValueError("a carried value changes shape in the loop")
        nodes = list(gm.graph.nodes)
        slots: dict[Node, _Ref] = {}

        def ref(n: Node) -> _Ref:
            return slots.setdefault(n, _Ref(len(slots)))

        placeholders = [n for n in nodes if n.op == "placeholder"]
        self._inputs = tuple(ref(n) for n in placeholders)
        self._constants = {ref(n): getattr(gm, str(n.target)) for n in nodes
                           if n.op == "get_attr"}
        self._parameters = {ref(n): name for n, name in zip(placeholders[1:], names,
                                                             strict=True)}
        entry, inside = calls[loop.start], set(calls[loop.start:end])

        def refs(a: Any) -> Any:
            return pytree.tree_map_only(Node, ref, a)

        # what a call runs: the operations around the loop, and the loop (None) where it begins
        self._plan: list[_Op | None] = [
            None if n is entry else _Op(n.target, refs(n.args), refs(n.kwargs), ref(n))
            for n in calls if n is entry or n not in inside]
        last = calls[end - loop.period:end]
        self._invariants = tuple(ref(n) for n in self.step.invariants)
        self._initial = tuple(ref(n) for n in self.step.initial)
        self._results = tuple(ref(last[q]) for q in self.step.outputs)
        (result,) = pytree.tree_leaves(next(n for n in nodes if n.op == "output").args[0])
        self._result = ref(result)
        self._examples = ([example(n) for n in self.step.invariants],
                          [example(n) for n in self.step.initial])
        # the step as a program too, for launches the compiled step cannot take (_eager_step)
        step_nodes = list(self.step.module.graph.nodes)
        step_refs = {n: _Ref(i) for i, n in enumerate(step_nodes)}
        self._step_program = [
            _Op(n.target, pytree.tree_map_only(Node, step_refs.__getitem__, n.args),
                pytree.tree_map_only(Node, step_refs.__getitem__, n.kwargs), step_refs[n])
            for n in step_nodes if n.op == "call_function"]
        (step_out,) = (n for n in step_nodes if n.op == "output")
        self._step_outputs = tuple(step_refs[n] for n in step_out.args[0])
        self.divisors: tuple[int, ...] = ()  # step inputs divided by, as step_forward_graph says
        self._compile_step = compile_step or _torch_compile
        self._step_forward: _Forward | None = None
        self.with_tangent: tuple[tuple[bool, ...], ...] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__, _step_forward=None, _compile_step=None, step=None,
                     _examples=None)
        for key in ("_plan", "_step_program"):
            state[key] = [None if op is None else _Op(_target_name(op.target), op.args,
                                                      op.kwargs, op.out)
                          for op in state[key]]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for key in ("_plan", "_step_program"):
            state[key] = [None if op is None else _Op(_resolve(op.target), op.args, op.kwargs,
                                                      op.out)
                          for op in state[key]]
        self.__dict__.update(state)

    def attach(self, step_forward: _Forward) -> None:
        """The step's compiled forward mode, for the tangents ``with_tangent`` says."""
        self._step_forward = step_forward

    def __call__(self, columns: Tensor, params: dict[str, Tensor]) -> tuple[Tensor, ...]:
        values: dict[int, Any] = dict(zip(self._inputs,
                                          (columns, *(params[k] for k in self.names)),
                                          strict=True))
        for slot, constant in self._constants.items():
            values[slot] = constant.to(columns.device)
        tangents: dict[int, dict[str, Any]] = {
            slot: {name: torch.ones_like(params[name])}
            for slot, name in self._parameters.items() if name in self.wrt}
        for op in self._plan:
            if op is None:
                self._run_loop(values, tangents)
            else:
                _eager_forward(op, values, tangents, self.wrt)
        return (values[self._result],
                *(_tangent(values, tangents, self._result, w) for w in self.wrt))

    def _run_loop(self, values: dict[int, Any], tangents: dict[int, dict[str, Any]]) -> None:
        inv = [values[n] for n in self._invariants]
        with_tangent = tuple(tuple(w in tangents.get(n, {}) for n in self._invariants)
                             for w in self.wrt)
        if self._step_forward is None or self.with_tangent != with_tangent:
            if self._compile_step is None:
                raise ValueError("the step was built for other tangents than this call's")
            self._step_forward = self._compile_step(*self.step_forward_graph(with_tangent))
            self.with_tangent = with_tangent
        carried = [values[n] for n in self._initial]
        carried_t = [[_tangent(values, tangents, n, w) for n in self._initial] for w in self.wrt]
        inv_t = [[tangents[n][w] for n, has in zip(self._invariants, mask, strict=True) if has]
                 for w, mask in zip(self.wrt, with_tangent, strict=True)]
        m, k = len(self._initial), len(self._results)
        outs: tuple[Tensor, ...] = ()
        step: _Forward = self._step_forward
        first = [*inv, *carried, *(x for it, ct in zip(inv_t, carried_t, strict=True)
                                   for x in (*it, *ct))]
        if not all(_divides_alike(first[i]) for i in self.divisors):
            step = functools.partial(self._eager_step, with_tangent)
        for _ in range(self.loop.count):
            flat = step(*inv, *carried,
                        *(x for it, ct in zip(inv_t, carried_t, strict=True) for x in (*it, *ct)))
            outs = flat
            carried = list(flat[:m])
            carried_t = [list(flat[k + i * k:k + i * k + m]) for i in range(len(self.wrt))]
        for j, slot in enumerate(self._results):
            values[slot] = outs[j]
            tangents[slot] = {w: outs[k + i * k + j] for i, w in enumerate(self.wrt)}

    def _eager_step(self, with_tangent: tuple[tuple[bool, ...], ...], *flat: Tensor
                    ) -> tuple[Tensor, ...]:
        """One step in eager forward mode, called as the compiled step is."""
        n_inv, n_car = len(self._invariants), len(self._initial)
        values: dict[int, Any] = dict(enumerate(flat[:n_inv + n_car]))
        tangents: dict[int, dict[str, Any]] = {}
        at = n_inv + n_car
        for w, mask in zip(self.wrt, with_tangent, strict=True):
            moving = [i for i, has in enumerate(mask) if has] + [n_inv + j for j in range(n_car)]
            for i, t in zip(moving, flat[at:at + len(moving)], strict=True):
                tangents.setdefault(i, {})[w] = t
            at += len(moving)
        for op in self._step_program:
            _eager_forward(op, values, tangents, self.wrt)
        return (*(values[r] for r in self._step_outputs),
                *(_tangent(values, tangents, r, w) for w in self.wrt for r in self._step_outputs))

    def step_forward_graph(self, with_tangent: tuple[tuple[bool, ...], ...]
                           ) -> tuple[GraphModule, list[Tensor]]:
        """The step's forward mode, one jvp per parameter, traced for any batch size, and
        example arguments for it (at TRACE_N samples); divisions by a scalar input that does
        not change from step to step are multiplications by its reciprocal, and ``divisors``
        says which inputs those are."""
        step = self.step
        n_inv, n_car = len(step.invariants), len(step.carried)

        def forward(*flat: Tensor) -> tuple[Tensor, ...]:
            inv, carried, rest = flat[:n_inv], flat[n_inv:n_inv + n_car], flat[n_inv + n_car:]
            # with no tangents (plain evaluation's graph: no wrt), the step itself
            outs: tuple[Tensor, ...] = () if with_tangent else tuple(step.module(*inv, *carried))
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

        inv_ex, car_ex = self._examples
        tan_ex = [x for mask in with_tangent
                  for x in (*(torch.empty_like(e)  # distinct: make_fx maps by identity
                              for e, has in zip(inv_ex, mask, strict=True) if has),
                            *(torch.empty_like(c) for c in car_ex))]
        args = [*inv_ex, *car_ex, *tan_ex]
        unchanging, at = set(range(n_inv)), n_inv + n_car  # the invariants and their tangents
        for mask in with_tangent:
            unchanging.update(range(at, at + sum(mask)))
            at += sum(mask) + n_car
        gm = trace(forward, *args)
        self.divisors = _by_reciprocals(gm, unchanging)
        return gm, args


def _by_reciprocals(gm: GraphModule, unchanging: set[int]) -> tuple[int, ...]:
    """Rewrite ``x / s``, s a scalar floating input of ``gm`` among ``unchanging`` (by
    position), as ``x * (1 / s)``: one division per call instead of one per sample and
    step. The positions of the inputs so divided."""
    graph = gm.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    position = {n: i for i, n in enumerate(placeholders)}
    reciprocals: dict[Node, Node] = {}
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not aten.div.Tensor or node.kwargs:
            continue
        x, s = node.args
        while isinstance(s, Node) and s.target is aten.alias.default:
            s = s.args[0]
        if not (isinstance(s, Node) and isinstance(x, Node) and position.get(s) in unchanging):
            continue
        sv, xv = s.meta.get("val"), x.meta.get("val")
        if not (isinstance(sv, Tensor) and isinstance(xv, Tensor) and sv.dim() == 0
                and sv.dtype.is_floating_point and xv.dtype == sv.dtype):
            continue
        if s not in reciprocals:
            with graph.inserting_after(placeholders[-1]):
                reciprocals[s] = graph.call_function(aten.reciprocal.default, (s,))
        with graph.inserting_before(node):
            product = graph.call_function(aten.mul.Tensor, (x, reciprocals[s]))
        node.replace_all_uses_with(product)
        graph.erase_node(node)
    gm.recompile()
    return tuple(sorted(position[s] for s in reciprocals))


def _divides_alike(s: Tensor) -> bool:
    """Whether ``x * (1 / s)`` is ``x / s`` to about an ulp for every x."""
    bound = SAFE_DIVISOR.get(s.dtype)
    a = abs(float(s))
    return bound is not None and (a == 0 or not math.isfinite(a) or 1 / bound <= a <= bound)


def _torch_compile(graph: GraphModule, args: list[Tensor]) -> _Forward:
    compiled: _Forward = torch.compile(graph, dynamic=True, fullgraph=True)
    return compiled


def _tangent(values: dict[int, Any], tangents: dict[int, dict[str, Any]], slot: int,
             w: str) -> Tensor:
    """The value's tangent for w; zeros for a value that does not move with w."""
    t: Tensor | None = tangents.get(slot, {}).get(w)
    return torch.zeros_like(values[slot]) if t is None else t


def _eager_forward(op: _Op, values: dict[int, Any], tangents: dict[int, dict[str, Any]],
                   wrt: tuple[str, ...]) -> None:
    """One operation outside the loop, with its tangents (jvp of that operation alone)."""
    if op.target is operator.getitem:  # one value of an operation with several
        source, index = op.args
        values[op.out] = values[source][index]
        tangents[op.out] = {w: t[index] for w, t in tangents.get(source, {}).items()}
        return
    flat, spec = pytree.tree_flatten((op.args, op.kwargs))
    resolved = [values[x] if isinstance(x, _Ref) else x for x in flat]
    args, kwargs = pytree.tree_unflatten(resolved, spec)
    target: Callable[..., Any] = op.target
    values[op.out] = target(*args, **kwargs)
    pushed: dict[str, Any] = {}
    for w in wrt:
        moving = [i for i, x in enumerate(flat) if isinstance(x, _Ref) and w in tangents.get(x, {})]
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
        tangents[op.out] = pushed
