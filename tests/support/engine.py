"""The engine without HTTP or the worker: Problems and hand-built Jobs on the built-in routines,
checked against their closed forms (tests.support.closed_forms)."""

from __future__ import annotations

import torch
from torch import Tensor

from app.engine.differentiation.strategies import Problem
from app.engine.runtime.executor import Executor
from app.engine.runtime.jobs import Job, JobKind, JobResult
from routines import Routine
from tests.support.closed_forms import CLOSED_FORMS

__all__ = ["AD_RTOL", "BUILTINS", "FD_ATOL_SCALE", "FD_RTOL", "assert_close",
           "assert_matches_closed_form", "params_of", "problem_for", "run_engine"]

# AD in float64 agrees with the closed forms to ~1e-14 relative on these batches; 1e-8 is the
# contract.
AD_RTOL = 1e-8
# Central differences with h = eps^(1/3) max(1, |C|) err by ~h^2 |f'''| + eps |f| / h, i.e.
# ~eps^(2/3) ~ 4e-11 of the output's scale in float64 (1.7e-8 relative is the worst seen on
# these batches). 1e-5 relative is the contract; the absolute floor, 1e-9 of the largest
# output, is 25x that rounding bound and only matters where a derivative crosses zero.
FD_RTOL = 1e-5
FD_ATOL_SCALE = 1e-9

BUILTINS = sorted(CLOSED_FORMS)


def assert_close(actual: Tensor, expected: Tensor, rtol: float, atol: float = 0.0) -> None:
    torch.testing.assert_close(actual, expected.to(actual.dtype), rtol=rtol, atol=atol)


def params_of(r: Routine, values: dict[str, float], dtype: torch.dtype) -> dict[str, Tensor]:
    return {p.name: torch.tensor(values.get(p.name, p.default), dtype=dtype) for p in r.params}


def run_engine(r: Routine, inputs: Tensor,
               params: dict[str, float], *, strategy: str | None = "auto",
               wrt: tuple[str, ...] | None = None) -> JobResult:
    """The engine path without HTTP or the worker: a validated Job through run_job."""
    job = Job(
        kind=JobKind.EVALUATE if strategy is None else JobKind.SENSITIVITIES,
        routine=r,
        inputs=inputs,
        params={p.name: float(params.get(p.name, p.default)) for p in r.params},
        wrt=() if strategy is None else (wrt or r.param_names),
        strategy=strategy,
        dtype=inputs.dtype,
    )
    return Executor(torch.device("cpu")).run_job(job)


def problem_for(r: Routine, n: int, dtype: torch.dtype = torch.float64,
                wrt: tuple[str, ...] | None = None, seed: int = 0) -> Problem:
    """``n`` samples of the routine's closed-form batch, with its parameters."""
    form = CLOSED_FORMS[r.name]
    x = form.batch(n, seed).to(dtype)
    return Problem(r, x, params_of(r, form.params, dtype), wrt or r.param_names)


def assert_matches_closed_form(problem: Problem, values: Tensor, derivs: dict[str, Tensor],
                               strategy: str) -> None:
    exact_values, exact = CLOSED_FORMS[problem.routine.name].expected(problem.inputs)
    assert values.shape == exact_values.shape
    assert_close(values, exact_values, rtol=AD_RTOL)
    assert list(derivs) == list(problem.wrt)
    for name in problem.wrt:
        assert derivs[name].shape == exact_values.shape
        assert derivs[name].dtype == values.dtype
        if strategy == "finite-difference":
            atol = FD_ATOL_SCALE * float(exact_values.abs().max())
            assert_close(derivs[name], exact[name], rtol=FD_RTOL, atol=atol)
        else:
            assert_close(derivs[name], exact[name], rtol=AD_RTOL)
