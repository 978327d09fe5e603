"""Derivatives with respect to input features (delta = dPrice/dS), per sample.

An input feature named in ``wrt`` becomes a per-sample parameter of a derived routine that
takes the feature from that parameter instead of from its column. Row i of a routine depends
only on sample i, so the derivative along a tangent of ones on that parameter is exactly the
per-sample dy_i/dx_ij that a one-hot tangent on column j gives: every strategy that takes
per-sample parameters (forward mode, its second order, vmap-grad, jacfwd, finite
differences) then differentiates inputs with no code of its own.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any
from weakref import WeakKeyDictionary

from torch import Tensor

from app.engine.differentiation.strategies import Problem
from routines import Param, Routine

__all__ = ["derived", "features_in", "origin", "with_features_as_params"]

# derived routine -> (the routine it derives from, its features); weak, so that a routine
# the cache of derived() lets go of is forgotten here too
_ORIGINS: WeakKeyDictionary[Routine, tuple[Routine, tuple[str, ...]]] = WeakKeyDictionary()


def features_in(routine: Routine, wrt: tuple[str, ...]) -> tuple[str, ...]:
    """The wrt names that are input features (a name that is also a parameter is the
    parameter)."""
    return tuple(w for w in wrt if w in routine.inputs and w not in routine.param_names)


def origin(routine: Routine) -> tuple[Routine, tuple[str, ...]]:
    """The routine a derived one was made from and the features it takes as parameters;
    ``(routine, ())`` for any other."""
    return _ORIGINS.get(routine, (routine, ()))


@lru_cache(maxsize=256)
def derived(routine: Routine, features: tuple[str, ...]) -> Routine:
    """``routine`` taking ``features`` from per-sample parameters of those names (the same
    object for the same arguments)."""
    columns = {f: routine.inputs.index(f) for f in features}
    fn = routine.fn

    def with_features(*xs: Any, **params: Any) -> Any:
        row = list(xs)
        for feature, j in columns.items():
            row[j] = params.pop(feature)
        return fn(*row, **params)

    made = Routine(
        name=routine.name,
        description=routine.description,
        params=(*routine.params, *(Param(f, 0.0, "input feature") for f in features)),
        inputs=routine.inputs,
        outputs=routine.outputs,
        fn=with_features,
        vectorized=routine.vectorized,
        compile=routine.compile,
        title=routine.title,
    )
    _ORIGINS[made] = (routine, features)
    return made


def with_features_as_params(problem: Problem) -> Problem:
    """The same problem, with each input feature in wrt moved to a per-sample parameter."""
    features = features_in(problem.routine, problem.wrt)
    if not features:
        return problem
    columns: dict[str, Tensor] = {
        f: problem.inputs[:, problem.routine.inputs.index(f)] for f in features}
    return Problem(derived(problem.routine, features), problem.inputs,
                   {**problem.params, **columns}, problem.wrt)
