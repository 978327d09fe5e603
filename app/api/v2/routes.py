"""The v2 REST endpoints: server and model metadata, health, and inference.

Thin: they read the body (with the v1 size limit), let :mod:`~app.api.v2.framing` and
:mod:`~app.api.v2.tensors` translate, and call the same engine as v1. Errors become
``{"error": ...}`` in :mod:`app.errors`.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from app import __version__
from app.api.decoding import parse_json, read_body, read_buffer
from app.api.deps import EngineDep, engine_of, settings_of
from app.api.instrumentation import observe
from app.api.v2 import framing, tensors
from app.api.v2.schemas import (
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    ServerMetadata,
    TensorMetadata,
)
from app.engine import STRATEGIES, Engine
from app.errors import UnknownVersion, v2_errors
from app.http.record import current_record
from routines import Routine

__all__ = ["router"]

router = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"])

SERVER_NAME = "dydc"
EXTENSIONS = ["binary_tensor_data"]
MODEL_VERSION = "1"  # routines are not versioned: each is served as version 1
PLATFORM = "dydc"

_ERROR = {"content": {"application/json": {"example": {"error": "what to change"}}}}
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Bad request, malformed binary framing included", **_ERROR},
    404: {"description": "Unknown model or version", **_ERROR},
    413: {"description": "Body or batch over the configured limits", **_ERROR},
    415: {"description": "Body sent as a form or as text", **_ERROR},
    503: {"description": "Not ready, or the queue is full", **_ERROR},
    504: {"description": "Still queued at its deadline", **_ERROR},
}


def _request_id() -> str | None:
    """The request's X-Request-ID, the answer's ``id`` when the request has none."""
    record = current_record()
    return record.id if record is not None else None


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _model(engine: Engine, name: str, version: str | None) -> Routine:
    routine = engine.routine(name)
    if version is not None and version != MODEL_VERSION:
        raise UnknownVersion(
            f"model {name} has no version {version!r}; it is served as version {MODEL_VERSION}"
        )
    return routine


@router.get("", response_model=ServerMetadata)
async def server_metadata() -> ServerMetadata:
    return ServerMetadata(name=SERVER_NAME, version=__version__, extensions=EXTENSIONS)


@router.get("/health/live")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", responses={503: {"description": "Not ready; the error says why"}})
async def ready(engine: EngineDep) -> Response:
    reason = engine.worker.not_ready_reason()
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
    ready = engine.worker.not_ready_reason() is None
    return _json({"name": routine.name, "ready": ready}, 200 if ready else 503)


@router.get("/models/{name}/ready", responses={404: _ERRORS[404]})
async def model_ready(name: str, engine: EngineDep) -> Response:
    return await _model_ready(engine, name, None)


@router.get("/models/{name}/versions/{version}/ready", responses={404: _ERRORS[404]})
async def model_version_ready(name: str, version: str, engine: EngineDep) -> Response:
    return await _model_ready(engine, name, version)


async def _infer(name: str, version: str | None, request: Request, engine: Engine,
                 limit: int) -> Response:
    async with observe("infer") as labels:
        with v2_errors():
            routine = _model(engine, name, version)
            labels.routine = routine.name
            length = framing.header_length(request)
            binary: memoryview | None = None
            if length is None:
                header: bytes | memoryview = await read_body(request, limit)
            else:
                body = await read_buffer(request, limit, aligned_at=length)
                header, binary = framing.split(body, length)
            inference = InferenceRequest.model_validate(parse_json(bytes(header)))
            call = tensors.plan(routine, inference,
                                framing.input_sections(inference.inputs, binary))
            labels.strategy = call.strategy if call.strategy in STRATEGIES else "invalid"
            job = engine.prepare(call.kind, routine.name, call.inputs, call.params,
                                 wrt=call.wrt, strategy=call.strategy, dtype=call.dtype,
                                 timeout_ms=call.timeout_ms)
            result = await engine.run(job)
            labels.ran(job, result)
            labels.strategy = result.strategy or "none"
            header_doc, binaries = tensors.response(routine, inference.id or _request_id(),
                                                    MODEL_VERSION, call, result)
            return framing.InferenceResponse(header_doc, binaries)


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
    200: {"model": InferenceResponse, "description": "The outputs (values, dy/d<param>)"},
    **_ERRORS,
}


@router.post("/models/{name}/infer", responses=_INFER_RESPONSES,
             openapi_extra=_INFER_OPENAPI)
async def infer(name: str, request: Request) -> Response:
    """Values and dy/d<param> of a routine, as Open Inference Protocol tensors."""
    return await _infer(name, None, request, engine_of(request),
                        settings_of(request).max_body_bytes)


@router.post("/models/{name}/versions/{version}/infer", responses=_INFER_RESPONSES,
             openapi_extra=_INFER_OPENAPI)
async def infer_version(name: str, version: str, request: Request) -> Response:
    return await _infer(name, version, request, engine_of(request),
                        settings_of(request).max_body_bytes)
