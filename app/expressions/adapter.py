"""A caller's expression (or ODE) as a routine the engine runs like a registered one.

:class:`Expressions` parses and checks the text, interprets the checked tree as a function of
one sample (each input feature a 0-d tensor in column order, each parameter a 0-d keyword:
the contract of ``routines.registry``), and wraps it in a :class:`routines.Routine`. The
engine then batches it with ``vmap`` and differentiates it (forward mode, reverse mode, second
order, input features in ``wrt``) with no code of its own. The routine's name is derived from
the canonical text and the declared names, so that requests for the same function share
launches and compiled graphs; a bounded LRU keeps parsing off the hot path.

A routine carries its canonical text and declaration as ``source`` (JSON), from which
:func:`rebuild` makes it again in a build process (app.engine.compiled.builds), through the same
parser and checks: the text is data there too, never run.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import keyword
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor

from app.expressions.bounds import Bounds
from app.expressions.canonical import canonical
from app.expressions.errors import ExpressionError, ExpressionTooLarge
from app.expressions.functions import CONSTANTS
from app.expressions.interpreter import Evaluator, Scope, Value, interpret
from app.expressions.ode import METHODS, OdeSpec, integrate
from app.expressions.parsing import parse
from app.expressions.tree import Name, Node, walk
from routines import Param, Routine

if TYPE_CHECKING:
    from app.config import Settings

__all__ = ["ExpressionRoutine", "Expressions", "rebuild"]

# A parameter's default is used only where the engine measures or warms a routine up on its
# own (inputs of ones); every request gives every parameter its value.
_DEFAULT = 1.0


@dataclass(frozen=True, eq=False)
class ExpressionRoutine:
    """What a request's expression became: its canonical text and the routine to run."""

    canonical: str
    routine: Routine


class Expressions:
    """Parses expressions into routines, within ``bounds``, keeping the last ``cache_size``."""

    def __init__(self, bounds: Bounds | None = None, cache_size: int = 256) -> None:
        self.bounds = bounds or Bounds()
        self._expression = functools.lru_cache(maxsize=cache_size)(self._build_expression)
        self._ode = functools.lru_cache(maxsize=cache_size)(self._build_ode)

    @classmethod
    def from_settings(cls, settings: Settings) -> Expressions:
        return cls(Bounds.from_settings(settings), settings.expression_cache)

    def expression(
        self, expression: str | Sequence[str], inputs: Sequence[str], params: Sequence[str]
    ) -> ExpressionRoutine:
        """The routine computing ``expression`` (M texts give M outputs, y1 .. yM) of the
        input features ``inputs`` (in column order) and the parameters ``params``."""
        if isinstance(expression, str):
            texts: tuple[str, ...] = (expression,)
        elif isinstance(expression, list | tuple) and all(isinstance(t, str) for t in expression):
            texts = tuple(expression)
        else:
            raise ExpressionError("give a string, or a list of strings", field="expression")
        return self._expression(
            texts, _names("inputs.names", inputs), tuple(sorted(_names("params", params)))
        )

    def ode(self, spec: OdeSpec, inputs: Sequence[str], params: Sequence[str]) -> ExpressionRoutine:
        """The routine integrating ``spec``; its one output is named after the state."""
        fields = {
            "rhs": spec.rhs,
            "initial": spec.initial,
            "state": spec.state,
            "time": spec.time,
            "method": spec.method,
        }
        for field, value in fields.items():
            if not isinstance(value, str):
                raise ExpressionError("give a string", field=f"ode.{field}")
        if isinstance(spec.steps, bool) or not isinstance(spec.steps, int) or spec.steps < 1:
            raise ExpressionError(f"{spec.steps!r} must be a positive integer", field="ode.steps")
        return self._ode(
            spec, _names("inputs.names", inputs), tuple(sorted(_names("params", params)))
        )

    def cache_info(self) -> tuple[int, int]:
        """Entries held, and the most kept, over both forms."""
        held = self._expression.cache_info().currsize + self._ode.cache_info().currsize
        return held, self._expression.cache_info().maxsize or 0

    # -- building ---------------------------------------------------------------------------

    def _build_expression(
        self, texts: tuple[str, ...], inputs: tuple[str, ...], params: tuple[str, ...]
    ) -> ExpressionRoutine:
        _check_names(inputs, params)
        if not texts:
            raise ExpressionError("give one expression, or a list of them", field="expression")
        total = sum(len(t) for t in texts)
        if total > self.bounds.max_chars:
            raise ExpressionTooLarge(
                f"the expressions have {total} characters together, more than "
                f"{self.bounds.max_chars}",
                setting="DYDC_EXPRESSION_MAX_CHARS", field="expression",
            )
        trees = []
        for i, text in enumerate(texts):
            field = "expression" if len(texts) == 1 else f"expression[{i}]"
            trees.append(parse(text, (*inputs, *params), self.bounds, field=field))
        text = "; ".join(canonical(t) for t in trees)
        outputs = ("y",) if len(trees) == 1 else tuple(f"y{i + 1}" for i in range(len(trees)))
        fn = _expression_fn([interpret(t) for t in trees], inputs)
        operations = sum(_size(t) for t in trees)
        source = {"expression": [canonical(t) for t in trees]}
        return _adapted(text, inputs, params, outputs, fn, operations,
                        self._source(source, inputs, params))

    def _build_ode(
        self, spec: OdeSpec, inputs: tuple[str, ...], params: tuple[str, ...]
    ) -> ExpressionRoutine:
        _check_names(inputs, params)
        declared = (*inputs, *params)
        state, time = spec.state, spec.time
        if not _is_name(state) or state in declared or state in CONSTANTS:
            raise ExpressionError(
                f"{state!r} must be an identifier that is neither an input, a parameter nor a "
                "constant (it names the integrated quantity)", field="ode.state"
            )
        if time not in declared:
            raise ExpressionError(
                f"{time!r} must name an input or a parameter (the end time of each sample); "
                f"declared: {', '.join(declared)}", field="ode.time"
            )
        if spec.method not in METHODS:
            raise ExpressionError(
                f"{spec.method!r} is not a method; use one of {', '.join(METHODS)}",
                field="ode.method"
            )
        if spec.steps > self.bounds.max_ode_steps:
            raise ExpressionTooLarge(
                f"{spec.steps} steps are more than {self.bounds.max_ode_steps}",
                setting="DYDC_EXPRESSION_MAX_ODE_STEPS", field="ode.steps",
            )
        if len(spec.rhs) + len(spec.initial) > self.bounds.max_chars:
            raise ExpressionTooLarge(
                f"rhs and initial have {len(spec.rhs) + len(spec.initial)} characters "
                f"together, more than {self.bounds.max_chars}",
                setting="DYDC_EXPRESSION_MAX_CHARS", field="ode",
            )
        rhs = parse(spec.rhs, (*declared, state), self.bounds, field="ode.rhs")
        initial = parse(spec.initial, declared, self.bounds, field="ode.initial")
        text = (
            f"ode(rhs={canonical(rhs)}, state={state}, initial={canonical(initial)}, "
            f"time={time}, steps={spec.steps}, method={spec.method})"
        )
        timed = Name(time) in walk(rhs)
        fn = _ode_fn(interpret(rhs), interpret(initial), spec, inputs, timed)
        stages = 4 if spec.method == "rk4" else 1
        # each stage evaluates the right-hand side; combining the stages costs a few more
        operations = _size(initial) + spec.steps * (stages * (_size(rhs) + 2) + 2 * stages)
        source = {"ode": {**dataclasses.asdict(spec), "rhs": canonical(rhs),
                          "initial": canonical(initial)}}
        return _adapted(text, inputs, params, (state,), fn, operations,
                        self._source(source, inputs, params))

    def _source(self, form: Mapping[str, object], inputs: tuple[str, ...],
                params: tuple[str, ...]) -> str:
        """What :func:`rebuild` makes the routine from: the canonical texts, the declared
        names and the bounds they were checked within."""
        return json.dumps({**form, "inputs": list(inputs), "params": list(params),
                           "bounds": dataclasses.asdict(self.bounds)}, sort_keys=True)


def rebuild(source: str) -> Routine:
    """The routine whose ``source`` this is (in a build process, which has no request to
    make it from): parsed and checked again as a request's expression is."""
    spec = json.loads(source)
    bounds = Bounds(**spec["bounds"])
    # the canonical spelling may be longer than the caller's (spaces around operators):
    # the length bound held for the text as sent
    texts = spec["ode"].values() if "ode" in spec else spec["expression"]
    length = sum(len(t) for t in texts if isinstance(t, str))
    expressions = Expressions(dataclasses.replace(bounds, max_chars=max(bounds.max_chars,
                                                                        length)), cache_size=0)
    if "ode" in spec:
        made = expressions.ode(OdeSpec(**spec["ode"]), spec["inputs"], spec["params"])
    else:
        made = expressions.expression(spec["expression"], spec["inputs"], spec["params"])
    return made.routine


def _names(field: str, names: Sequence[str]) -> tuple[str, ...]:
    """``names`` as a tuple of strings (a key of the cache), or the error saying so."""
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise ExpressionError("give a list of names (strings)", field=field)
    return tuple(names)


def _is_name(name: object) -> bool:
    return (
        isinstance(name, str)
        and name.isascii()
        and name.isidentifier()
        and not keyword.iskeyword(name)
    )


def _check_names(inputs: tuple[str, ...], params: tuple[str, ...]) -> None:
    """Declared names: identifiers, unique, none a constant; at least one of each kind (the
    engine's contract for a routine)."""
    for field, names in (("inputs.names", inputs), ("params", params)):
        for name in names:
            if not _is_name(name):
                raise ExpressionError(
                    f"{name!r} is not a name (letters, digits and _, not starting with a "
                    "digit, not a Python keyword)", field=field
                )
            if name in CONSTANTS:
                raise ExpressionError(
                    f"{name!r} is a constant of the language ({', '.join(CONSTANTS)}); "
                    "rename it", field=field
                )
        if len(set(names)) != len(names):
            raise ExpressionError("a name is given twice", field=field)
    both = sorted(set(inputs) & set(params))
    if both:
        raise ExpressionError(
            f"{', '.join(both)}: declared both as an input and as a parameter; rename one"
        )
    if not inputs:
        raise ExpressionError("declare at least one input feature", field="inputs.names")
    if not params:
        raise ExpressionError("declare at least one parameter", field="params")


def _expression_fn(evaluators: list[Evaluator], inputs: tuple[str, ...]) -> Callable[..., object]:
    def expression(*features: Tensor, **params: Tensor) -> Tensor | tuple[Tensor, ...]:
        scope = Scope({**dict(zip(inputs, features, strict=True)), **params}, features[0])
        outputs = tuple(scope.tensor(e(scope)) for e in evaluators)
        return outputs[0] if len(outputs) == 1 else outputs

    return expression


def _ode_fn(
    rhs: Evaluator, initial: Evaluator, spec: OdeSpec, inputs: tuple[str, ...], timed: bool
) -> Callable[..., object]:
    state, time = spec.state, spec.time

    def ode(*features: Tensor, **params: Tensor) -> Tensor:
        scope = Scope({**dict(zip(inputs, features, strict=True)), **params}, features[0])
        start, end = scope.tensor(initial(scope)), scope.values[time]
        values = scope.values

        def rate(s: Value | None, y: Tensor) -> Value:
            values[state] = y
            if s is not None:
                values[time] = scope.tensor(s)
            return rhs(scope)

        return scope.tensor(integrate(rate, start, end, spec.steps, spec.method, timed=timed))

    return ode


def _size(tree: Node) -> int:
    """The tree's nodes: about the tensor operations of one evaluation."""
    return sum(1 for _ in walk(tree))


def _adapted(
    text: str,
    inputs: tuple[str, ...],
    params: tuple[str, ...],
    outputs: tuple[str, ...],
    fn: Callable[..., object],
    operations: int,
    source: str,
) -> ExpressionRoutine:
    key = "\0".join((text, ",".join(inputs), ",".join(params)))
    name = "expression-" + hashlib.sha256(key.encode()).hexdigest()[:16]
    routine = Routine(
        name=name,
        description=text,
        params=tuple(Param(p, _DEFAULT, "expression parameter") for p in params),
        inputs=inputs,
        outputs=outputs,
        fn=fn,
        operations=operations,
        source=source,  # what a build process makes it again from (rebuild)
        title="the expression",  # its name is the service's, not the caller's
    )
    return ExpressionRoutine(text, routine)
