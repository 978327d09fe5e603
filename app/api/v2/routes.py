"""The v2 REST endpoints: server and model metadata, health, and inference.

:class:`V2` is the Open Inference Protocol's codec over the one request pipeline
(app.api.pipeline): it reads the body (JSON, or Triton's binary tensor data), lets
:mod:`~app.api.v2.framing` and :mod:`~app.api.v2.tensors` translate, and writes results and
errors (``{"error": ...}``, with 400 where v1 answers 422) in the protocol's format. The
other v2 routes answer their errors in that format too (:class:`V2Route`).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.routing import APIRoute
from starlette.responses import Response

from app import __version__
from app.api.answer_size import check_tensor_answer
from app.api.computation import computation_route
from app.api.decoding import parse_json
from app.api.deps import EngineDep
from app.api.instrumentation import RequestLabels
from app.api.pipeline import Decoded, Incoming, Reply, offload
from app.api.v2 import framing, tensors
from app.api.v2.schemas import (
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    ServerMetadata,
    TensorMetadata,
)
from app.context import current_record
from app.engine import STRATEGIES, Engine, Job, JobKind, JobResult
from app.engine.errors import InvalidRequest, NotFiniteInput, RequestTooLarge, UnknownRoutine
from app.engine.runtime.validation import checked_strategy
from app.errors import MalformedBody, ProblemDetails, UnknownVersion, json_bytes, problem_of
from routines import Routine

__all__ = ["EXPRESSION_MODEL", "INFER", "V2", "error_response", "router"]

SERVER_NAME = "dydc"
MODEL_VERSION = "1"  # routines are not versioned: each is served as version 1
PLATFORM = "dydc"
EXPRESSION_MODEL = "expression"  # a caller's expression as a model (app.api.v2.expression)


def _status(problem: ProblemDetails) -> int:
    return 400 if problem.status == 422 else problem.status


def error_body(problem: ProblemDetails) -> bytes:
    """``{"error"}``, in v2's terms: its deadline is parameters.timeout, in microseconds (the
    engine's words name v1's timeout_ms)."""
    detail = problem.detail.replace(
        "raise timeout_ms (at most DYDC_REQUEST_TIMEOUT_MS)",
        "raise parameters.timeout (in microseconds; at most the server's "
        "DYDC_REQUEST_TIMEOUT_MS, which is in milliseconds)")
    return json_bytes({"error": detail.replace(
        "raise timeout_ms", "raise parameters.timeout (in microseconds)")})


def error_response(problem: ProblemDetails) -> Response:
    """A problem in the protocol's format: ``{"error"}``, 400 where v1 says 422."""
    return Response(error_body(problem), status_code=_status(problem),
                    media_type="application/json", headers=problem.headers or None)


class V2Route(APIRoute):
    """A v2 route: whatever it raises is answered in the protocol's error format."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def run(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                return error_response(problem_of(exc, request.method, request.url.path))

        return run


router = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"], route_class=V2Route)

# Every error is {"error"} (error_body; its schema: app.api.openapi), but for what the server
# writes itself before any route runs, on every path: problem details (app.server) for a
# request that did not arrive in time (408), a head over DYDC_MAX_HEADER_BYTES as it arrives
# (431) and a connection over DYDC_MAX_CONNECTIONS (503). Those are declared on the inference
# routes, where a client meets them.
_ERROR_JSON: dict[str, Any] = {"application/json": {
    "schema": {"$ref": "#/components/schemas/ErrorResponse"},
    "example": {"error": "what to change"}}}
_SERVER_PROBLEM: dict[str, Any] = {"application/problem+json": {
    "schema": {"$ref": "#/components/schemas/Problem"}}}
_ERROR: dict[str, Any] = {"content": _ERROR_JSON}
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Bad request, malformed binary framing included", **_ERROR},
    404: {"description": "Unknown model or version", **_ERROR},
    408: {"description": "The request (headers and body) did not arrive within "
                         "DYDC_READ_TIMEOUT_S; the connection is closed",
          "content": _SERVER_PROBLEM},
    413: {"description": "Body or batch over the configured limits", **_ERROR},
    415: {"description": "Body sent as a form or as text, or in an unsupported "
                         "Content-Encoding", **_ERROR},
    431: {"description": "More header fields than DYDC_MAX_HEADERS, or more bytes than "
                         "DYDC_MAX_HEADER_BYTES (problem details when the server refuses the "
                         "head as it arrives)", "content": {**_ERROR_JSON, **_SERVER_PROBLEM}},
    503: {"description": "Not ready, or at a bound (queue, bodies in flight; problem details "
                         "for a connection over DYDC_MAX_CONNECTIONS); Retry-After says when to "
                         "retry",
          "headers": {"Retry-After": {"description": "Seconds to wait before retrying",
                                      "schema": {"type": "integer", "minimum": 1}}},
          "content": {**_ERROR_JSON, **_SERVER_PROBLEM}},
    504: {"description": "The deadline passed before the answer", **_ERROR},
}


def answer_id(given: str | None) -> str | None:
    """The answer's ``id``: the request's, even empty (the protocol returns an id given),
    else the request's X-Request-ID."""
    if given is not None:
        return given
    record = current_record()
    return record.id if record is not None else None


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _model(engine: Engine, name: str, version: str | None) -> Routine:
    try:
        routine = engine.routine(name)
    except UnknownRoutine as exc:  # the expression model is one too (app.api.v2.expression)
        exc.reword(f"no model named {name!r}; the models are: "
                   f"{', '.join(sorted({*engine.routines, EXPRESSION_MODEL}))}")
        raise
    if version is not None and version != MODEL_VERSION:
        raise UnknownVersion(
            f"model {name} has no version {version!r}; it is served as version {MODEL_VERSION}"
        )
    return routine


def _document(header: bytes, binary: memoryview | None) -> Any:
    """The JSON header parsed; when it is not JSON, said in the framing's terms where the
    framing explains it (app.api.v2.framing.not_json)."""
    try:
        return parse_json(header)
    except MalformedBody as exc:
        framed = framing.not_json(header, binary, str(exc))
        if framed is None:
            raise
        raise framed from exc


def _samples_declared(shape: object) -> int | None:
    """An input's declared samples: the first dimension when it is a whole number (2.0 and
    2e19, which orjson reads as floats, too: the schema takes them as integers)."""
    n = shape[0] if isinstance(shape, list) and shape else None
    if type(n) is float and n.is_integer():
        return int(n)
    return n if type(n) is int else None


def inference_request(header: bytes, max_samples: int,
                      binary: memoryview | None = None) -> InferenceRequest:
    """The JSON header as an inference request (``binary``: what followed it, when
    Inference-Header-Content-Length delimits it); 413 for an input whose declared shape has
    more samples than DYDC_MAX_SAMPLES, before its data is validated (only the inputs'
    shapes count: a "shape" elsewhere in the body is not one)."""
    document = _document(header, binary)
    inputs = document.get("inputs") if isinstance(document, dict) else None
    for given in inputs if isinstance(inputs, list) else ():
        n = _samples_declared(given.get("shape") if isinstance(given, dict) else None)
        if n is not None and n > max_samples:
            shown = str(n) if n < 10**15 else f"{n:.3g}"  # (2e308 as a float: 309 digits)
            raise RequestTooLarge(
                f"an input has shape [{shown}, ...]: {shown} samples; the limit is "
                f"{max_samples} per request (DYDC_MAX_SAMPLES): split the batch"
            )
    return InferenceRequest.model_validate(document)


class V2:
    """The Open Inference Protocol's inference request: JSON, or a JSON header and binary
    tensors; its response in the same form; ``{"error"}`` for errors."""

    query_options: frozenset[str] | None = None  # (app.api.computation)

    endpoint = "infer"

    def _prepare(self, engine: Engine, routine: Routine, header: bytes,
                 binary: memoryview | None,
                 labels: RequestLabels) -> tuple[Job, InferenceRequest, tensors.Call]:
        inference = inference_request(header, engine.limits.max_samples, binary)
        return self.job(engine, routine, inference, binary, labels)

    def job(self, engine: Engine, routine: Routine, inference: InferenceRequest,
            binary: memoryview | None,
            labels: RequestLabels) -> tuple[Job, InferenceRequest, tensors.Call]:
        """The engine's job for ``inference`` on ``routine`` (registered or not)."""
        strategy = inference.parameters.get("strategy", "auto")
        labels.strategy = strategy if isinstance(strategy, str) and strategy in STRATEGIES \
            else "invalid"
        call = tensors.plan(routine, inference, framing.input_sections(inference.inputs, binary))
        if call.request.kind is JobKind.EVALUATE and "strategy" in inference.parameters:
            # an evaluation runs no strategy, but one no request could mean is refused all
            # the same, as it is when derivatives are asked
            checked_strategy(call.request.strategy, engine.limits)
        try:
            job = engine.prepare(call.request)
        except NotFiniteInput as exc:  # said of the request's tensors, not of v1's rows
            raise tensors.not_finite(routine, inference.inputs, exc,
                                     call.request.inputs) from None
        except InvalidRequest as exc:  # of parameters, in v1's words (params.T)
            raise tensors.in_v2_terms(exc, call.request) from None
        return job, inference, call

    async def read(self, request: Incoming) -> tuple[bytes, memoryview | None]:
        """The body's JSON header, and its binary tensor data if any."""
        length = framing.header_length(request.headers)
        binary: memoryview | None = None
        if length is None:
            header = await request.body.read()
        else:
            body = await request.body.read_aligned(length)
            view, binary = framing.split(body, length)
            header = bytes(view)
        return header, binary

    async def decode(self, request: Incoming, engine: Engine) -> Decoded:
        labels = request.labels
        routine = _model(engine, request.path_params["name"], request.path_params.get("version"))
        labels.routine = routine.name
        header, binary = await self.read(request)
        size = len(header) + (len(binary) if binary is not None else 0)
        job, inference, call = await offload(size, self._prepare, engine, routine, header,
                                             binary, labels)
        check_tensor_answer(job, call.outputs, job.dtype.itemsize,
                            request.settings.max_response_bytes)
        return Decoded(job, (routine, inference.id, call))

    async def run(self, engine: Engine, decoded: Decoded) -> JobResult:
        return await engine.run(decoded.job)

    def encode(self, decoded: Decoded, result: JobResult, started: float) -> Reply:
        routine, request_id, call = decoded.context
        header, binaries = tensors.response(routine, answer_id(request_id), MODEL_VERSION, call,
                                            result)
        body, media_type, headers = framing.encode(header, binaries)
        return Reply(200, body, media_type, headers)

    def error(self, problem: ProblemDetails) -> Reply:
        return Reply(_status(problem), error_body(problem), "application/json",
                     problem.headers)


INFER = V2()


@router.get("", response_model=ServerMetadata)
async def server_metadata() -> ServerMetadata:
    return ServerMetadata(name=SERVER_NAME, version=__version__, extensions=tensors.EXTENSIONS)


@router.get("/health/live")
async def live() -> dict[str, bool]:
    return {"live": True}


_SERVER_READY: dict[int | str, dict[str, Any]] = {
    200: {"description": "Ready", "content": {"application/json": {"schema": {
        "type": "object", "properties": {"ready": {"const": True}}, "required": ["ready"],
        "additionalProperties": False}}}},
    503: {"description": "Not ready; the error says why", "content": {"application/json": {
        "schema": {"type": "object",
                   "properties": {"ready": {"const": False}, "error": {"type": "string"}},
                   "required": ["ready", "error"], "additionalProperties": False}}}},
}


@router.get("/health/ready", responses=_SERVER_READY)
async def ready(engine: EngineDep) -> Response:
    reason = engine.readiness()
    if reason is not None:
        return _json({"ready": False, "error": reason}, 503)
    return _json({"ready": True})


def _metadata(routine: Routine) -> ModelMetadata:
    m = len(routine.outputs)
    out_shape = [-1] if m == 1 else [-1, m]
    datatype = "FP64"  # FP32 is accepted too: outputs follow the inputs' datatype
    return ModelMetadata(
        name=routine.name,
        versions=[MODEL_VERSION],
        platform=PLATFORM,
        inputs=[TensorMetadata(name=f, datatype=datatype, shape=[-1]) for f in routine.inputs],
        outputs=[TensorMetadata(name=o, datatype=datatype, shape=out_shape)
                 for o in tensors.model_outputs(routine)],
    )


@router.get("/models/{name}", response_model=ModelMetadata, responses={404: _ERRORS[404]})
async def model_metadata(name: str, engine: EngineDep) -> ModelMetadata:
    return _metadata(_model(engine, name, None))


@router.get("/models/{name}/versions/{version}", response_model=ModelMetadata,
            responses={404: _ERRORS[404]})
async def model_version_metadata(name: str, version: str, engine: EngineDep) -> ModelMetadata:
    return _metadata(_model(engine, name, version))


async def _model_ready(engine: Engine, name: str, version: str | None) -> Response:
    routine = _model(engine, name, version)
    ready = engine.readiness() is None
    return _json({"name": routine.name, "ready": ready}, 200 if ready else 503)


def _readiness(ready: bool) -> dict[str, Any]:
    return {"application/json": {"schema": {
        "type": "object", "properties": {"name": {"type": "string"}, "ready": {"const": ready}},
        "required": ["name", "ready"], "additionalProperties": False}}}


_MODEL_READY: dict[int | str, dict[str, Any]] = {
    200: {"description": "The model is ready", "content": _readiness(True)},
    404: _ERRORS[404],
    503: {"description": "The model is known, but the service is not ready (warming up, or "
                         "shutting down)", "content": _readiness(False)},
}


@router.get("/models/{name}/ready", responses=_MODEL_READY)
async def model_ready(name: str, engine: EngineDep) -> Response:
    return await _model_ready(engine, name, None)


@router.get("/models/{name}/versions/{version}/ready", responses=_MODEL_READY)
async def model_version_ready(name: str, version: str, engine: EngineDep) -> Response:
    return await _model_ready(engine, name, version)


# The route reads its body itself (JSON, or binary tensor data after a JSON header); this
# documents both.
_INFER_OPENAPI: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": InferenceRequest.model_json_schema(
        ref_template="#/components/schemas/{model}")},
    "application/octet-stream": {
        "schema": {"type": "string", "format": "binary"},
        "description": "binary_tensor_data: the JSON header, then the tensors' bytes; "
                       "Inference-Header-Content-Length gives the header's length"},
}}}
_INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": InferenceResponse,
          "description": "The outputs (values, dy/d<param>): JSON, or with an output's (or "
                         "the request's) binary_data_output, the JSON header and then the "
                         "binary outputs' bytes (application/octet-stream)",
          "headers": {framing.HEADER_LENGTH: {
              "description": "The JSON header's length in bytes, when binary outputs follow it",
              "schema": {"type": "integer", "minimum": 0}}},
          "content": {"application/octet-stream": {
              "schema": {"type": "string", "format": "binary"}}}},
    **_ERRORS,
}


computation_route(
    router, "/models/{name}/infer", INFER, "infer",
    """Values and dy/d<param> of a routine, as Open Inference Protocol tensors.""",
    responses=_INFER_RESPONSES, openapi_extra=_INFER_OPENAPI,
)
computation_route(
    router, "/models/{name}/versions/{version}/infer", INFER, "infer_version", "",
    responses=_INFER_RESPONSES, openapi_extra=_INFER_OPENAPI,
)
