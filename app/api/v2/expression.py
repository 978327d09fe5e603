"""``POST /v2/models/expression/infer``: a caller's expression as an Open Inference Protocol
model.

The request is a v2 inference request whose ``parameters`` hold the function: ``expression``
(a string, or a list of strings for several outputs) or ``ode`` (the ODE object of v1 as a
JSON string), and ``inputs``, the feature names separated by commas, naming the columns of the
input tensor ``x`` [N, D] (or one tensor per feature, named after it). The other numeric
parameters are the expression's parameters; an input tensor named after neither ``x`` nor a
feature is a parameter with one value per sample. ``wrt``, ``order``, ``cross``, ``strategy``
and ``timeout`` are read as for a routine. The answer is a routine's, with ``model_name``
"expression" and the canonical text in its ``parameters.expression``. ``GET
/v2/models/expression`` and ``.../ready`` (and their ``versions/1`` forms) answer as for a
routine's model.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import orjson
from fastapi import APIRouter
from pydantic import ValidationError
from pydantic_core import ErrorDetails
from starlette.responses import Response

from app.api.answer_size import check_tensor_answer
from app.api.computation import computation_route
from app.api.deps import EngineDep
from app.api.expression_schemas import OdeBody
from app.api.expressions import METRICS_ROUTINE, expressions_for, make_routine
from app.api.instrumentation import RequestLabels
from app.api.pipeline import EXPRESSION_OFFLOAD_BYTES, Decoded, Incoming, Reply, offload
from app.api.schemas import split_names
from app.api.v2 import framing, tensors
from app.api.v2.routes import (
    EXPRESSION_MODEL,
    MODEL_VERSION,
    PLATFORM,
    V2,
    V2Route,
    answer_id,
    inference_request,
)
from app.api.v2.schemas import InferenceRequest, ModelMetadata, ParameterValue, TensorMetadata
from app.engine import Engine, Job, JobResult
from app.engine.errors import EngineError, InvalidRequest
from app.errors import UnknownVersion
from app.expressions import Expressions
from app.expressions.errors import ExpressionError, UnknownName

__all__ = ["EXPRESSION_INFER", "MODEL", "ExpressionV2", "router"]

MODEL = EXPRESSION_MODEL
# The request parameters that describe the function, not its parameters' values.
_FUNCTION = ("expression", "ode", "inputs")


def _names(given: ParameterValue | None) -> list[str]:
    if isinstance(given, str):
        return split_names(given, "parameters.inputs")
    if isinstance(given, list):
        return list(given)
    raise InvalidRequest(
        "parameters.inputs is missing or not a string; send the input features' names "
        'separated by commas (the columns of the input tensor x), e.g. "N0,t"'
    )


# the request fields the language names (v1's), as a v2 request sends them
_V2_FIELDS = {"inputs.names": "parameters.inputs", "params": "parameters",
              "ode": "parameters.ode"}
_NO_PARAMETER = ("the expression has no parameter; declare at least one parameter: a number "
                 "in parameters, or an input tensor named after it (one value per sample)")


def _in_v2_terms(exc: ExpressionError) -> ExpressionError:
    """``exc``, its message naming the request field it is of (``exc.field``) in v2's terms."""
    field = exc.field
    if field is None:
        return exc
    if field == "params" and exc.detail == "declare at least one parameter":
        exc.reword(_NO_PARAMETER)
    else:
        said = _V2_FIELDS.get(field) or (
            f"parameters.ode: {field.removeprefix('ode.')}" if field.startswith("ode.")
            else f"parameters.{field}")  # expression, expression[i]
        exc.reword(f"{said}: {exc.detail}")
    return exc


def _ode(given: ParameterValue | None) -> dict[str, Any] | None:
    """The ``ode`` parameter: a JSON object with rhs, state, initial, time, steps, method."""
    if given is None:
        return None
    ode = None
    if isinstance(given, str):
        with contextlib.suppress(ValueError, RecursionError):
            ode = json.loads(given)
    fields = "rhs, state, initial and time (and optionally steps and method)"
    if not isinstance(ode, dict):
        raise InvalidRequest(
            f"parameters.ode must be a JSON object (as a string) with the fields {fields}; "
            f"got {str(given)[:80]!r}"
        )
    try:  # v1's schema of an ode: the same fields, types and messages
        return OdeBody.model_validate(ode).model_dump()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'ode'}: {e['msg']}"
                             for e in exc.errors())
        raise InvalidRequest(f"parameters.ode: {problems}; send a JSON object (as a string) "
                             f"with the fields {fields}") from None


_ODE_EXAMPLE = {"rhs": "-k * y", "state": "y", "initial": "y0", "time": "t"}


def _refuse_function_object(exc: ValidationError) -> None:
    """The ``ode`` (or ``expression``) sent as a JSON object or list, which no v2 parameter
    is, said with what to send instead (the protocol's words alone, "is dict; a parameter is
    a string, a number or a boolean", do not say how to send an ode); the request's other
    problems follow."""
    errors = exc.errors()
    for error in errors:
        message = _function_object(error)
        if message is not None:
            others = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors
                      if e is not error]
            raise InvalidRequest("; ".join([message, *others])) from None


def _function_object(error: ErrorDetails) -> str | None:
    if error["loc"] == ("parameters", "ode"):
        given = error["input"]
        example = json.dumps(given) if isinstance(given, dict) else ""
        if not example or len(example) > 200:
            example = json.dumps(_ODE_EXAMPLE)
        kind = "an object" if isinstance(given, dict) else "not a string"
        return (f"parameters.ode is {kind}, but a v2 parameter is a string, a number or a "
                "boolean: send the ode object as a JSON string (json.dumps(ode) in Python), "
                f'e.g. "ode": {json.dumps(example)}')
    if error["loc"] == ("parameters", "expression"):
        return ("parameters.expression: send the expression as a string, or a list of "
                "strings for several outputs")
    return None


class ExpressionV2(V2):
    """The v2 codec for the ``expression`` model: the routine comes from the request's
    parameters instead of the path."""

    def _prepare_expression(
        self,
        engine: Engine,
        expressions: Expressions,
        header: bytes,
        binary: memoryview | None,
        labels: RequestLabels,
    ) -> tuple[Job, InferenceRequest, tensors.Call, str]:
        try:
            inference = inference_request(header, engine.limits.max_samples, binary)
        except ValidationError as exc:
            _refuse_function_object(exc)
            raise
        parameters = dict(inference.parameters)
        expression, ode, names = (parameters.pop(key, None) for key in _FUNCTION)
        features = _names(names)
        if expression is not None and not isinstance(expression, str | list):
            raise InvalidRequest(
                "parameters.expression is not a string; send the expression as a string, or a "
                "list of strings for several outputs"
            )
        per_sample = [
            given.name
            for given in inference.inputs
            if given.name != tensors.MATRIX_INPUT and given.name not in features
        ]
        declared = [k for k in parameters if k not in tensors._RESERVED] + per_sample
        ode_given = _ode(ode)
        if (expression is None) == (ode_given is None):  # (make_routine's words are v1's)
            raise InvalidRequest(
                "send one of expression and ode in parameters: parameters.expression (a "
                "formula, or a list of them) or parameters.ode (the ODE object as a JSON "
                "string)")
        try:
            made = make_routine(expressions, expression, ode_given, features, declared)
        except ExpressionError as exc:
            reserved = [k for k in tensors._RESERVED if k in parameters]
            if not reserved or not (
                    (isinstance(exc, UnknownName) and exc.name in reserved)
                    or "declare at least one parameter" in str(exc)):
                raise _in_v2_terms(exc) from None
            # a parameter named like one of this model's options is read as the option
            raise InvalidRequest(
                f"{_in_v2_terms(exc)}; the parameters {', '.join(reserved)} are read as this "
                "model's options "
                f"({', '.join(tensors._RESERVED)}), never as the expression's parameters: "
                "rename such a parameter in the expression") from None
        try:
            job, inference, call = self.job(
                engine,
                made.routine,
                inference.model_copy(update={"parameters": parameters}),
                binary,
                labels,
            )
        except EngineError as exc:  # the routine's name is the service's, not the caller's
            exc.reword(exc.message.replace(made.routine.name, MODEL))
            raise
        return job, inference, call, made.canonical

    async def decode(self, request: Incoming, engine: Engine) -> Decoded:
        request.labels.routine = METRICS_ROUTINE
        _version(request.path_params.get("version"))
        header, binary = await self.read(request)
        size = len(header) + (len(binary) if binary is not None else 0)
        job, inference, call, canonical = await offload(
            size,
            self._prepare_expression,
            engine,
            expressions_for(request.settings),
            header,
            binary,
            request.labels,
            at=EXPRESSION_OFFLOAD_BYTES,
        )
        check_tensor_answer(
            job, call.outputs, job.dtype.itemsize, request.settings.max_response_bytes
        )
        return Decoded(job, (inference.id, call, canonical))

    def encode(self, decoded: Decoded, result: JobResult, started: float) -> Reply:
        request_id, call, canonical = decoded.context
        header, binaries = tensors.response(
            decoded.job.routine, answer_id(request_id), MODEL_VERSION, call, result
        )
        header["model_name"] = MODEL
        header["parameters"]["expression"] = canonical
        body, media_type, headers = framing.encode(header, binaries)
        return Reply(200, body, media_type, headers)


EXPRESSION_INFER = ExpressionV2()

router = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"], route_class=V2Route)


# Left out of the OpenAPI document: its function rides in string parameters that no schema can
# confine to the language, so a contract fuzzer's bodies are all refused (400); docs/v2.md and
# docs/expressions.md describe it.
computation_route(
    router, f"/models/{MODEL}/infer", EXPRESSION_INFER, "infer",
    """A caller's expression (parameters.expression, or parameters.ode) as a model: values
    and derivatives as Open Inference Protocol tensors.""",
    include_in_schema=False,
)
computation_route(  # what a Triton client with model_version="1" posts to
    router, f"/models/{MODEL}/versions/{{version}}/infer", EXPRESSION_INFER, "infer_version",
    "", include_in_schema=False,
)


# The model's metadata and readiness, as for a routine's model, so that an Open Inference
# Protocol client that asks before it infers finds the model (the generic /models/{name}
# routes know only the registry's routines). The function, so its outputs, comes with each
# request: the metadata declare the one input tensor and the values of a single expression.
def _metadata(version: str | None) -> ModelMetadata:
    _version(version)
    return ModelMetadata(
        name=MODEL,
        versions=[MODEL_VERSION],
        platform=PLATFORM,
        inputs=[TensorMetadata(name=tensors.MATRIX_INPUT, datatype="FP64", shape=[-1, -1])],
        outputs=[TensorMetadata(name="y", datatype="FP64", shape=[-1])],
    )


def _version(version: str | None) -> None:
    if version is not None and version != MODEL_VERSION:
        raise UnknownVersion(
            f"model {MODEL} has no version {version!r}; it is served as version {MODEL_VERSION}"
        )


def _ready(engine: Engine, version: str | None) -> Response:
    _version(version)
    ready = engine.readiness() is None
    return Response(orjson.dumps({"name": MODEL, "ready": ready}),
                    status_code=200 if ready else 503, media_type="application/json")


@router.get(f"/models/{MODEL}", include_in_schema=False)
async def metadata() -> ModelMetadata:
    """The expression model's metadata: the input tensor x [N, D] whose columns
    parameters.inputs names; the outputs follow the function each request sends."""
    return _metadata(None)


@router.get(f"/models/{MODEL}/versions/{{version}}", include_in_schema=False)
async def version_metadata(version: str) -> ModelMetadata:
    return _metadata(version)


@router.get(f"/models/{MODEL}/ready", include_in_schema=False)
async def ready(engine: EngineDep) -> Response:
    return _ready(engine, None)


@router.get(f"/models/{MODEL}/versions/{{version}}/ready", include_in_schema=False)
async def version_ready(version: str, engine: EngineDep) -> Response:
    return _ready(engine, version)
