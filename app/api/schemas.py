"""The v1 wire format as pydantic models: request bodies are validated with them, and the
response models document what the routes write (with orjson, straight from tensors)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SkipValidation,
    StrictBool,
    StrictFloat,
    StrictInt,
)

__all__ = [
    "BumpInfo",
    "CheckInfo",
    "CompareResponse",
    "CompareRow",
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
# A number shared by every sample, or one per sample: checked by the engine, element by
# element (params.sigma[17]), without a Python object per number on the way to an array.
ParamValue = Annotated[Number | list[Number], SkipValidation]


ParamName = Annotated[str, Field(min_length=1)]
# Omitted means every parameter; an empty list is refused (422) by the engine, whose message
# says what to do: the schema says so with minItems.
Wrt = Annotated[list[ParamName], Field(json_schema_extra={"minItems": 1})]


class EvaluateRequest(BaseModel):
    """(The examples, one per routine, are in the OpenAPI document: app.api.openapi.)"""

    model_config = ConfigDict(extra="forbid")

    inputs: Inputs = Field(description="N x D rows, or a flat list of N numbers when D = 1.")
    params: dict[str, ParamValue] = Field(
        default_factory=dict, description="Parameter values, each a number shared by every "
        "sample or a list of N numbers (one per sample); defaults for those left out."
    )
    dtype: str = Field("float64", description="float64 or float32.",
                       json_schema_extra={"enum": ["float64", "float32"]})
    wrt: Wrt | None = Field(None, description="Ignored by /evaluate; accepted so "
                                        "that one body serves both endpoints.")
    order: StrictInt = Field(1, description="Ignored by /evaluate.")
    cross: StrictBool = Field(False, description="Ignored by /evaluate.")


class SensitivityRequest(EvaluateRequest):
    wrt: Wrt | None = Field(
        None, description="Parameters and/or input features to differentiate with respect "
        "to; default all parameters. For an input feature j the derivative is dy_i/dx_ij."
    )
    order: StrictInt = Field(1, description="1, or 2 for second derivatives as well.")
    cross: StrictBool = Field(
        False, description="Order 2: every unordered pair of wrt (true), or the diagonal "
        "d2y/da2 only (false)."
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


class BumpInfo(BaseModel):
    shift: float
    shift_type: Literal["absolute", "relative"]
    scheme: Literal["central", "forward", "backward"]


class CheckInfo(BaseModel):
    strategy: str
    max_abs_diff: dict[str, float]
    max_rel_diff: dict[str, float] = Field(description="max |a - b| / max |b|, b the bump's.")


class SensitivityResponse(EvaluateResponse):
    strategy: str = Field(description="The strategy that ran (auto names its choice).")
    derivatives: dict[str, Values] = Field(description="dy/d<param>, shaped like values.")
    second_derivatives: dict[str, Values] | None = Field(
        None, description='Order 2: d2y/da db keyed "a,b" (a before b in wrt order).')
    bump: BumpInfo | None = Field(None, description="The bump that ran (finite differences).")
    check: CheckInfo | None = Field(None, description="With check=finite-difference.")


class CompareRow(BaseModel):
    strategy: str
    status: Literal["ok", "skipped", "failed"]
    reason: str | None
    time_ms: float | None = Field(description="The launch's compute time.")
    max_abs_diff: dict[str, float]
    max_rel_diff: dict[str, float]


class CompareResponse(BaseModel):
    routine: str
    n: int
    order: int
    reference: str
    strategies: list[CompareRow]
    values: Values
    derivatives: dict[str, Values]
    second_derivatives: dict[str, Values] | None = None


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
    enabled: bool = Field(True, description="false when the operator left it out of "
                          "DYDC_STRATEGIES: requests for it get 422.")
    order2: bool = Field(description="Computes second derivatives (order: 2).")
    per_sample_params: bool = Field(
        description="Takes per-sample parameters, and input features in wrt.")


class StrategyList(BaseModel):
    default: str
    strategies: list[StrategyInfo]
