"""The v1 wire format as pydantic models: request bodies are validated with them, and the
response models document what the routes write (with orjson, straight from tensors)."""

from __future__ import annotations

import difflib
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SkipValidation,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
)
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

from app.engine.errors import InvalidRequest

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
    "split_names",
    "unknown_field",
    "validate_request",
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


def split_names(given: str, field: str) -> list[str]:
    """``"sigma, r"`` as ``["sigma", "r"]``: the comma-separated form v1, v2, the client and
    the command line take. A comma at either end is a typing habit and goes; an empty name
    between two names (``"C,,x"``) is refused: it had been dropped silently, where a name
    may have been left out. Nothing but commas and spaces is an empty list (which the
    engine refuses, saying what to do)."""
    names = [w.strip() for w in given.strip().strip(",").split(",")]
    if any(names) and not all(names):
        raise InvalidRequest(
            f"{field} = {given!r} has an empty name between two commas; give the names "
            "separated by single commas")
    return [w for w in names if w]


def _split_names(given: Any) -> Any:
    return split_names(given, "wrt") if isinstance(given, str) else given


# Omitted means every parameter; an empty list is refused (422) by the engine, whose message
# says what to do: the schema says so with minItems. (app.api.openapi names the parameters
# and features of the routines served.)
_WrtGiven = (Annotated[list[ParamName], Field(min_length=1)]
             | Annotated[str, Field(pattern=r"[^\s,]", description="Names separated by commas.")])
Wrt = Annotated[list[ParamName], BeforeValidator(_split_names, json_schema_input_type=_WrtGiven)]


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
    wrt: Wrt | None = Field(None, description="Not used by /evaluate, but checked: "
                                        "accepted so that one body serves both endpoints.")
    order: StrictInt = Field(1, description="Ignored by /evaluate.")
    cross: StrictBool = Field(False, description="Ignored by /evaluate.")


class SensitivityRequest(EvaluateRequest):
    wrt: Wrt | None = Field(
        None, description="Parameters and/or input features to differentiate with respect "
        "to; default all parameters. For an input feature j the derivative is dy_i/dx_ij."
    )
    order: StrictInt = Field(1, description="1, or 2 for second derivatives as well.",
                             json_schema_extra={"enum": [1, 2]})
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
    params: dict[str, float | list[float]] = Field(
        description="The parameter values used, defaults included; a per-sample parameter as "
        "its list of N numbers.")
    outputs: list[str]
    values: Values
    timing_ms: Timing


class BumpInfo(BaseModel):
    shift: float
    shift_type: Literal["absolute", "relative"]
    scheme: Literal["central", "forward", "backward"] = Field(
        description="The scheme that ran: central only where every step was, else the first "
                    "one-sided one (a bump that stepped away from a bound).")
    schemes: dict[str, list[Literal["central", "forward", "backward"]]] | None = Field(
        None, description="Per wrt entry, the schemes its steps took over every sample and "
                          "order asked.")


class CheckInfo(BaseModel):
    strategy: str
    max_abs_diff: dict[str, float]
    max_rel_diff: dict[str, float | None] = Field(
        description="max |a - b| / max |b|, b the bump's; null where b is 0 for every sample "
                    "(no relative difference: read max_abs_diff), or the ratio overflows.")


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
    max_rel_diff: dict[str, float | None] = Field(
        description="null where the reference is 0 for every sample (no relative difference: "
                    "read max_abs_diff), or the ratio overflows.")


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


Request = TypeVar("Request", bound=BaseModel)
_NAME_AT_MOST = 64  # characters of an unknown field's name echoed back


def _shown(name: str) -> str:
    return name if len(name) <= _NAME_AT_MOST else f"{name[:_NAME_AT_MOST]}..."


def unknown_field(name: str, fields: list[str]) -> str:
    """What to say of a field the body should not have: the closest one, and all of them."""
    close = difflib.get_close_matches(name[:_NAME_AT_MOST], fields, n=1)
    hint = f'did you mean "{close[0]}"? ' if close else ""
    return f"unknown field {_shown(name)!r}; {hint}the fields are {', '.join(fields)}"


def _as_is(error: ErrorDetails) -> InitErrorDetails:
    details = InitErrorDetails(type=error["type"], loc=error["loc"], input=error["input"])
    if "ctx" in error:
        details["ctx"] = error["ctx"]
    return details


def validate_request(model: type[Request], document: Any) -> Request:
    """``model.model_validate(document)``, with a field that ``model`` has not (a misspelt
    ``param``) named as such, with the closest field and every field, instead of pydantic's
    "Extra inputs are not permitted". (Only the error path pays for it.)"""
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        errors = exc.errors()
        if not any(e["type"] == "extra_forbidden" for e in errors):
            raise
        fields = list(model.model_fields)
        hinted = [
            InitErrorDetails(type=PydanticCustomError(
                "extra_forbidden", "{hint}", {"hint": unknown_field(str(e["loc"][0]), fields)}),
                loc=(_shown(str(e["loc"][0])),), input=e["input"])
            if e["type"] == "extra_forbidden" and len(e["loc"]) == 1
            else _as_is(e)
            for e in errors
        ]
        raise ValidationError.from_exception_data(exc.title, hinted) from None
