"""The v2 wire format as pydantic models: the JSON part of an inference request, checked
field by field, and the metadata answers. Tensor ``data`` is converted by
:mod:`app.api.v2.tensors`, without a pydantic object per element."""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    SkipValidation,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    WithJsonSchema,
    field_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

__all__ = [
    "InferenceRequest",
    "InferenceResponse",
    "ModelMetadata",
    "Parameters",
    "RequestInput",
    "RequestOutput",
    "ResponseOutput",
    "ServerMetadata",
    "TensorMetadata",
]

# The protocol's $parameters: string, number or boolean values. (A list is accepted for
# ``wrt`` as a convenience; the protocol form is a comma-separated string.)
_PARAMETER_SCHEMA = {"anyOf": [{"type": "boolean"}, {"type": "number"}, {"type": "string"},
                               {"type": "array", "items": {"type": "string"}}]}


def _parameter(given: Any) -> Any:
    """One check with one message (pydantic's own, for null, listed every member of the
    union it failed: 'Input should be a valid boolean; ... a valid string; ...')."""
    if isinstance(given, bool | int | float | str) or (
            isinstance(given, list) and all(isinstance(x, str) for x in given)):
        return given
    kind = "null" if given is None else "a list of non-strings" if isinstance(given, list) \
        else "an object" if isinstance(given, dict) else type(given).__name__
    raise PydanticCustomError(  # (a ValueError's message gets pydantic's "Value error, ")
        "parameter", "is {kind}; a parameter is a string, a number or a boolean (a routine "
        "parameter with one value per sample is an input tensor named after it)",
        {"kind": kind})


ParameterValue = Annotated[StrictBool | StrictInt | StrictFloat | StrictStr | list[StrictStr],
                           PlainValidator(_parameter), WithJsonSchema(_PARAMETER_SCHEMA)]
Parameters = dict[str, ParameterValue]


def _whole(given: Any) -> Any:
    """A dimension sent as 3.0 is 3 (JSON Schema's integer includes it)."""
    return int(given) if isinstance(given, float) and given.is_integer() else given


def _whole_number(given: object) -> bool:
    """0, 1, 2, ... (2.0 too: JSON Schema's integer includes it; true is no number here)."""
    if isinstance(given, float):
        return given.is_integer() and given >= 0
    return isinstance(given, int) and not isinstance(given, bool) and given >= 0


Dim = Annotated[StrictInt, BeforeValidator(_whole), Field(ge=0),
                WithJsonSchema({"type": "integer", "minimum": 0})]


class RequestInput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: StrictStr
    shape: list[Dim]
    datatype: StrictStr
    parameters: Parameters = Field(default_factory=dict)
    data: Annotated[Any, SkipValidation] = None


class RequestOutput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: StrictStr
    parameters: Parameters = Field(default_factory=dict)


class InferenceRequest(BaseModel):
    """$inference_request. Unknown fields (``model_name`` in Triton's examples) are ignored."""

    model_config = ConfigDict(extra="ignore")

    id: StrictStr | None = None
    parameters: Parameters = Field(default_factory=dict)
    # minItems for the document; an empty list gets app.api.v2.tensors' own message
    inputs: list[RequestInput] = Field(json_schema_extra={"minItems": 1})
    outputs: list[RequestOutput] | None = None

    @field_validator("parameters")
    @classmethod
    def _priority(cls, parameters: Parameters) -> Parameters:
        """Triton's ``priority``, a whole number of 0 or more (0: the default level), is read
        and has no effect (one queue, first come first served); anything else is refused, as
        Triton refuses it, rather than taken silently (1.5 and "high" had been)."""
        given = parameters.get("priority")
        if given is None or _whole_number(given):
            return parameters
        shown = given if isinstance(given, int | float) and not isinstance(given, bool) \
            else json.dumps(given)
        error = PydanticCustomError(
            "priority", "is {given}; send a whole number of 0 or more (accepted, no effect: "
            "one first-come queue), or leave it out", {"given": str(shown)})
        raise ValidationError.from_exception_data(
            cls.__name__, [InitErrorDetails(type=error, loc=("priority",), input=given)])


class ResponseOutput(BaseModel):
    """$response_output: ``data`` is absent when the tensor is sent as binary data."""

    name: str
    datatype: str
    shape: list[int]
    parameters: Parameters | None = None
    data: list[float] | None = None


class InferenceResponse(BaseModel):
    """$inference_response (documentation: the route writes it from the tensors)."""

    model_name: str
    model_version: str | None = None
    id: str | None = Field(None, description="The request's id, or its X-Request-ID.")
    parameters: Parameters | None = None
    outputs: list[ResponseOutput]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 for the batch dimension.")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
