"""The wire format of the expression routes (``/v1/expressions/...``): a request is the body
of a routine's sensitivities with ``inputs`` naming its columns and ``expression`` (or
``ode``) in place of the routine's name in the path; the answer is a routine's, plus the
expression's canonical text."""

from __future__ import annotations

import keyword
import re
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

from app.api.schemas import (
    CompareResponse,
    EvaluateResponse,
    Inputs,
    ParamValue,
    SensitivityRequest,
    SensitivityResponse,
    _as_is,
)
from app.engine.errors import listed
from app.expressions import CONSTANTS, METHODS

__all__ = [
    "IDENTIFIER",
    "NAME_SCHEMA",
    "ExpressionCompareResponse",
    "ExpressionEvaluateResponse",
    "ExpressionInputs",
    "ExpressionRequest",
    "ExpressionSensitivityResponse",
    "FunctionInfo",
    "FunctionList",
    "OdeBody",
]

# A declared name (an input feature, a parameter, an ode's state) as the document says it: an
# ASCII identifier that is neither a Python keyword nor a constant of the language. The
# service's own check (app.expressions.adapter) answers the rest with its 422, naming it; the
# schema only says it, so that a client generated from the document knows.
IDENTIFIER = "[A-Za-z_][A-Za-z0-9_]*"
_NOT_A_NAME = sorted({*keyword.kwlist, *CONSTANTS})
NAME_SCHEMA: dict[str, Any] = {"pattern": f"^{IDENTIFIER}$", "not": {"enum": _NOT_A_NAME}}
_NAME_RULE = ("letters, digits and _, not starting with a digit, neither a Python keyword nor "
              "a constant of the language")

Name = Annotated[StrictStr, Field(min_length=1, json_schema_extra=NAME_SCHEMA)]


class ExpressionInputs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    names: Annotated[list[Name], Field(min_length=1)] = Field(
        description=f"The D input features, in column order: the names the expression uses "
        f"({_NAME_RULE}; each once, none also a parameter).",
        json_schema_extra={"uniqueItems": True},
    )
    values: Inputs = Field(description="N rows of D numbers, or a flat list of N when D = 1.")


class OdeBody(BaseModel):
    """d state / d time = rhs from initial over [0, time], in fixed steps."""

    model_config = ConfigDict(extra="forbid")

    rhs: StrictStr = Field(
        description="The rate: an expression of the state, the inputs, the "
        "parameters and the time name (the current time)."
    )
    state: StrictStr = Field(
        description=f"The integrated quantity's name (the output's name): a name ({_NAME_RULE}) "
        "that is neither an input nor a parameter.",
        json_schema_extra=NAME_SCHEMA,
    )
    initial: StrictStr = Field(
        description="The state at 0: an expression of inputs and parameters."
    )
    time: StrictStr = Field(description="An input or parameter: each sample's end time.",
                            json_schema_extra={"pattern": f"^{IDENTIFIER}$"})
    steps: StrictInt = Field(
        200, ge=1, description="Fixed steps over [0, time] (at most DYDC_EXPRESSION_MAX_ODE_STEPS)."
    )
    method: StrictStr = Field("rk4", json_schema_extra={"enum": list(METHODS)})


class ExpressionRequest(SensitivityRequest):
    """One of ``expression`` and ``ode``; parameters are the names of ``params``."""

    # "one of" as the document's oneOf: a member given as null counts as left out
    model_config = ConfigDict(json_schema_extra={"oneOf": [
        {"required": ["expression"], "properties": {"expression": {"type": ["string", "array"]}}},
        {"required": ["ode"], "properties": {"ode": {"type": "object"}}},
    ]})

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
        f"every sample, or a list of N numbers (one per sample). Its names are names "
        f"({_NAME_RULE}), none also an input.",
        json_schema_extra={"propertyNames": NAME_SCHEMA},
    )

    @model_validator(mode="wrap")
    @classmethod
    def _params_given(cls, data: Any, handler: ModelWrapValidatorHandler[ExpressionRequest]
                      ) -> ExpressionRequest:
        """``params`` missing or empty is said in the language's words, naming the names the
        expression uses beyond its inputs (pydantic's own: "Field required", "Dictionary
        should have at least 1 item"). Only the error path pays for it."""
        try:
            return handler(data)
        except ValidationError as exc:
            errors = exc.errors()
            if not isinstance(data, dict) or not any(_no_params(e) for e in errors):
                raise
            worded = [
                InitErrorDetails(
                    # value_error's ctx, so that app.api.schemas.validate_request, which
                    # rebuilds the errors by type, keeps the message
                    type=PydanticCustomError("value_error", "{error}",
                                             {"error": _params_needed(data)}),
                    loc=e["loc"], input=e["input"])
                if _no_params(e) else _as_is(e)
                for e in errors
            ]
            raise ValidationError.from_exception_data(exc.title, worded) from None


# A name in an expression's text, not called: what the caller may mean as a parameter. (A
# look at the text, not a parse: its checks and bounds come once params are given.)
_NAME = re.compile(r"\b[A-Za-z_]\w*\b(?!\s*\()")
_SCANNED = 4096  # characters of each text looked at


def _no_params(error: ErrorDetails) -> bool:
    return error["loc"] == ("params",) and error["type"] in ("missing", "too_short")


def _params_needed(document: dict[str, Any]) -> str:
    """What to write when ``params`` is missing or empty, with the names ``document``'s
    expression (or ode) uses beyond its inputs, if any."""
    message = ("an expression needs at least one parameter in params: a name with a number "
               "shared by every sample, or with a list of one number per sample")
    names = _used_names(document)
    if names is None:
        return (f'{message}; declare the parameters the expression uses, e.g. "params": '
                '{"C": 2} for C * x')
    if not names:
        return (f"{message}; the expression uses no name besides its inputs: make one of its "
                'numbers a parameter, e.g. C * x with "params": {"C": 2} for 2 * x')
    example = ", ".join(f'"{name}": 1.0' for name in names[:3])
    return (f"{message}; the expression uses {listed(names)} besides its inputs: declare "
            f'{"it" if len(names) == 1 else "them"}, e.g. "params": {{{example}}}')


def _used_names(document: dict[str, Any]) -> list[str] | None:
    """The names (not called) in the expression's or the ode's text that are neither inputs,
    nor the ode's state, nor constants, in order; None where there is no text to read."""
    ode = document.get("ode")
    given = document.get("expression")
    texts = [given] if isinstance(given, str) else given if isinstance(given, list) else []
    inputs = document.get("inputs")
    names = inputs.get("names") if isinstance(inputs, dict) else None
    if isinstance(ode, dict):
        texts = [ode.get(key) for key in ("rhs", "initial", "time")]
        names = [*(names if isinstance(names, list) else []), ode.get("state")]
    known = {*CONSTANTS, *(n for n in names or () if isinstance(n, str))}
    texts = [t for t in texts if isinstance(t, str)]
    if not texts:
        return None
    found: dict[str, None] = {}
    for text in texts:
        for match in _NAME.finditer(text[:_SCANNED]):
            name = match.group()
            if name not in known and not keyword.iskeyword(name):
                found.setdefault(name)
    return list(found)


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


def _whole(value: object) -> object:
    """A bound that is a whole number as an integer (4096, not 4096.0): the float settings
    (DYDC_EXPRESSION_MAX_EXPONENT) hold them too."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


class BoundInfo(BaseModel):
    value: Annotated[int | float, BeforeValidator(_whole)]
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
