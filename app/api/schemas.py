"""The v1 wire format as pydantic models: request bodies are validated with them, and the
response models document what the routes write (with orjson, straight from tensors)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SkipValidation, StrictFloat, StrictInt

__all__ = [
    "EvaluateRequest",
    "EvaluateResponse",
    "ParamInfo",
    "RoutineInfo",
    "RoutineList",
    "SensitivityRequest",
    "SensitivityResponse",
    "StrategyList",
]

Number = StrictFloat | StrictInt
# Inputs are checked element by element by app.api.decoding, with messages that point at the
# offending element and without a Python object per number on the way to a tensor.
# The schema says what the engine checks: at least one sample, at least one feature a row.
Row = Annotated[list[Number], Field(min_length=1)]
Inputs = Annotated[Annotated[list[Number], Field(min_length=1)]
                   | Annotated[list[Row], Field(min_length=1)], SkipValidation]
Values = list[float] | list[list[float]]


ParamName = Annotated[str, Field(min_length=1)]


class EvaluateRequest(BaseModel):
    """(The examples, one per routine, are in the OpenAPI document: app.api.openapi.)"""

    model_config = ConfigDict(extra="forbid")

    inputs: Inputs = Field(description="N x D rows, or a flat list of N numbers when D = 1.")
    params: dict[str, Number] = Field(
        default_factory=dict, description="Parameter values; defaults for those left out."
    )
    dtype: str = Field("float64", description="float64 or float32.",
                       json_schema_extra={"enum": ["float64", "float32"]})
    wrt: list[ParamName] | None = Field(None, description="Ignored by /evaluate; accepted so "
                                        "that one body serves both endpoints.")


class SensitivityRequest(EvaluateRequest):
    wrt: list[ParamName] | None = Field(
        None, description="Parameters to differentiate with respect to; default all."
    )


class Timing(BaseModel):
    queue: float
    compute: float
    total: float


class EvaluateResponse(BaseModel):
    routine: str
    dtype: str
    device: str
    n: int
    params: dict[str, float] = Field(description="The parameter values used, defaults included.")
    outputs: list[str]
    values: Values
    timing_ms: Timing


class SensitivityResponse(EvaluateResponse):
    strategy: str = Field(description="The strategy that ran (auto names its choice).")
    derivatives: dict[str, Values] = Field(description="dy/d<param>, shaped like values.")


class ParamInfo(BaseModel):
    name: str
    default: float
    description: str
    bounds: tuple[float | None, float | None] | None = None


class RoutineInfo(BaseModel):
    name: str
    description: str
    params: list[ParamInfo]
    inputs: list[str]
    outputs: list[str]
    vectorized: bool


class RoutineList(BaseModel):
    routines: list[RoutineInfo]


class StrategyInfo(BaseModel):
    name: str
    mode: str = Field(description="forward, reverse or numeric.")
    cost: str = Field(description="Work per request.")
    description: str
    cap: int | None = Field(description="Largest N accepted, if capped.")
    cap_setting: str | None
    batchable: bool


class StrategyList(BaseModel):
    default: str
    strategies: list[StrategyInfo]
