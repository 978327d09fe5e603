"""The wire format of the expression routes (``/v1/expressions/...``): a request is the body
of a routine's sensitivities with ``inputs`` naming its columns and ``expression`` (or
``ode``) in place of the routine's name in the path; the answer is a routine's, plus the
expression's canonical text."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator

from app.api.schemas import (
    CompareResponse,
    EvaluateResponse,
    Inputs,
    ParamValue,
    SensitivityRequest,
    SensitivityResponse,
)
from app.expressions import METHODS

__all__ = [
    "ExpressionCompareResponse",
    "ExpressionEvaluateResponse",
    "ExpressionInputs",
    "ExpressionRequest",
    "ExpressionSensitivityResponse",
    "FunctionInfo",
    "FunctionList",
    "OdeBody",
]

Name = Annotated[StrictStr, Field(min_length=1)]


class ExpressionInputs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    names: Annotated[list[Name], Field(min_length=1)] = Field(
        description="The D input features, in column order: the names the expression uses."
    )
    values: Inputs = Field(description="N rows of D numbers, or a flat list of N when D = 1.")


class OdeBody(BaseModel):
    """d state / d time = rhs from initial over [0, time], in fixed steps."""

    model_config = ConfigDict(extra="forbid")

    rhs: StrictStr = Field(
        description="The rate: an expression of the state, the inputs, the "
        "parameters and the time name (the current time)."
    )
    state: StrictStr = Field(description="The integrated quantity's name (the output's name).")
    initial: StrictStr = Field(
        description="The state at 0: an expression of inputs and parameters."
    )
    time: StrictStr = Field(description="An input or parameter: each sample's end time.")
    steps: StrictInt = Field(
        200, ge=1, description="Fixed steps over [0, time] (at most DYDC_EXPRESSION_MAX_ODE_STEPS)."
    )
    method: StrictStr = Field("rk4", json_schema_extra={"enum": list(METHODS)})


class ExpressionRequest(SensitivityRequest):
    """One of ``expression`` and ``ode``; parameters are the names of ``params``."""

    expression: StrictStr | Annotated[list[StrictStr], Field(min_length=1)] | None = Field(
        None,
        description="The function of the inputs and parameters (docs/expressions.md); "
        "a list of them gives several outputs, y1 .. yM.",
    )
    ode: OdeBody | None = Field(None, description="An ODE to integrate, in place of expression.")

    @field_validator("wrt")
    @classmethod
    def _wrt_named(cls, wrt: list[str] | None) -> list[str] | None:
        if wrt is not None and not wrt:
            raise ValueError("wrt names nothing; name parameters and/or inputs, or leave it out")
        return wrt

    inputs: ExpressionInputs  # type: ignore[assignment]
    params: dict[str, ParamValue] = Field(
        min_length=1,
        description="Every parameter the expression uses: a number shared by "
        "every sample, or a list of N numbers (one per sample).",
    )


class ExpressionEvaluateResponse(EvaluateResponse):
    expression: str = Field(description="The expression as normalised (its canonical text).")


class ExpressionSensitivityResponse(SensitivityResponse):
    expression: str = Field(description="The expression as normalised (its canonical text).")


class ExpressionCompareResponse(CompareResponse):
    expression: str = Field(description="The expression as normalised (its canonical text).")


class FunctionInfo(BaseModel):
    name: str
    signature: str
    arity: int
    description: str


class BoundInfo(BaseModel):
    value: float
    setting: str
    description: str


class FunctionList(BaseModel):
    functions: list[FunctionInfo]
    constants: dict[str, float]
    operators: list[str]
    comparisons: list[str]
    bounds: dict[str, BoundInfo] = Field(
        description="How large an expression may be, each bound with the setting that raises it."
    )
