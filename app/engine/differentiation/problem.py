"""The batch that every strategy differentiates (:class:`Problem`) and what each returns
(:class:`Derivatives`): the vocabulary shared by the strategies
(app.engine.differentiation.strategies), bumps (app.engine.differentiation.bumping), second order
and the compiled graphs, below all of them."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from app.engine.differentiation.evaluation import Params, evaluate_batch
from routines import Routine

__all__ = ["Derivatives", "Problem"]


@dataclass(frozen=True)
class Problem:
    """One batch to differentiate: inputs (N, D), parameter values, and which ones to vary."""

    routine: Routine
    inputs: Tensor
    params: dict[str, Tensor]
    wrt: tuple[str, ...]

    @property
    def n(self) -> int:
        return int(self.inputs.shape[0])

    def evaluate(self, params: Params | None = None) -> Tensor:
        return evaluate_batch(self.routine, self.inputs, self.params if params is None else params)

    def varying(self, *values: Tensor) -> dict[str, Tensor]:
        """The parameters with the wrt ones replaced by ``values``."""
        return {**self.params, **dict(zip(self.wrt, values, strict=True))}

    def wrt_values(self) -> tuple[Tensor, ...]:
        return tuple(self.params[name] for name in self.wrt)


@dataclass(frozen=True)
class Derivatives:
    values: Tensor  # (N, M)
    derivatives: dict[str, Tensor]  # each (N, M)
