"""The v1 REST API: routines, strategies, sensitivities and evaluation."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.api import schemas
from app.api.decoding import decode_inputs, parse_document, read_body
from app.api.deps import EngineDep, engine_of, settings_of
from app.api.encoding import JSONBytes, encode_result
from app.api.instrumentation import observe
from app.config import Settings
from app.engine import STRATEGIES, Engine, JobKind
from app.engine.errors import InvalidRequest
from routines import Routine

__all__ = ["compute", "router"]

router = APIRouter(prefix="/v1", tags=["v1"])

_PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}
_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "Unknown routine", **_PROBLEM},
    413: {"description": "Body or batch over the configured limits", **_PROBLEM},
    415: {"description": "Body not sent as application/json", **_PROBLEM},
    422: {"description": "Invalid request; the detail says what to change", **_PROBLEM},
    503: {"description": "Worker not ready or shutting down", **_PROBLEM},
    504: {"description": "Still queued at its deadline", **_PROBLEM},
}

# The computation routes read their query options themselves (see app.api.deps); these
# declare them in the OpenAPI document.
_COMPUTE_QUERY: list[dict[str, Any]] = [
    {"name": "strategy", "in": "query", "required": False,
     "schema": {"type": "string", "default": "auto", "enum": list(STRATEGIES)},
     "description": "How to differentiate (GET /v1/strategies)."},
    {"name": "timeout_ms", "in": "query", "required": False,
     "schema": {"type": "number", "exclusiveMinimum": 0},
     "description": "Deadline in ms, at most DYDC_REQUEST_TIMEOUT_MS: a request still queued "
                    "when it passes is dropped and answered 504."},
]


def _timeout_ms(query: Mapping[str, str]) -> float | None:
    given = query.get("timeout_ms")
    if given is None:
        return None
    try:
        return float(given)
    except ValueError:
        raise InvalidRequest(f"timeout_ms = {given!r}; use a positive number of ms") from None


async def compute(kind: JobKind, name: str, engine: Engine, settings: Settings,
                  query: Mapping[str, str], read_body: Callable[[int], Awaitable[bytes]]) -> bytes:
    """One computation request, from its path name, query options and body to the JSON
    answer. Shared by the FastAPI routes below and the bare ASGI path (app.api.fastpath);
    errors propagate to app.errors."""
    started = time.perf_counter()
    sensitivities = kind is JobKind.SENSITIVITIES
    strategy = query.get("strategy", "auto")
    async with observe(kind.value) as labels:
        labels.routine = engine.routine(name).name
        if sensitivities:
            labels.strategy = strategy if strategy in STRATEGIES else "invalid"
        model = schemas.SensitivityRequest if sensitivities else schemas.EvaluateRequest
        body = model.model_validate(parse_document(await read_body(settings.max_body_bytes)))
        job = engine.prepare(kind, name, decode_inputs(body.inputs), body.params,
                             wrt=body.wrt if sensitivities else None,
                             strategy=strategy if sensitivities else "auto", dtype=body.dtype,
                             timeout_ms=_timeout_ms(query))
        result = await engine.run(job)
        labels.ran(job, result)
        if sensitivities:
            labels.strategy = result.strategy or strategy
        return encode_result(job, result, started)


def _compute_openapi(model: type[schemas.EvaluateRequest],
                     query: list[dict[str, Any]]) -> dict[str, Any]:
    return {"parameters": query, "requestBody": {"required": True, "content": {
        "application/json": {"schema": model.model_json_schema()}}}}


def _info(r: Routine) -> schemas.RoutineInfo:
    return schemas.RoutineInfo(
        name=r.name,
        description=r.description,
        params=[schemas.ParamInfo(name=p.name, default=p.default, description=p.description,
                                  bounds=p.bounds) for p in r.params],
        inputs=list(r.inputs),
        outputs=list(r.outputs),
        vectorized=r.vectorized,
    )


# The computation routes come first: FastAPI tries routes in order, on every request.


@router.post(
    "/routines/{name}/sensitivities",
    response_model=schemas.SensitivityResponse,
    responses=_ERRORS,
    openapi_extra=_compute_openapi(schemas.SensitivityRequest, _COMPUTE_QUERY),
)
async def sensitivities(name: str, request: Request) -> Response:
    """Values and dy/d<param> for every sample of the batch."""
    return JSONBytes(await compute(JobKind.SENSITIVITIES, name, engine_of(request),
                                   settings_of(request), request.query_params,
                                   partial(read_body, request)))


@router.post(
    "/routines/{name}/evaluate",
    response_model=schemas.EvaluateResponse,
    responses=_ERRORS,
    openapi_extra=_compute_openapi(schemas.EvaluateRequest, _COMPUTE_QUERY[1:]),
)
async def evaluate(name: str, request: Request) -> Response:
    """Values only."""
    return JSONBytes(await compute(JobKind.EVALUATE, name, engine_of(request),
                                   settings_of(request), request.query_params,
                                   partial(read_body, request)))


@router.get("/routines", response_model=schemas.RoutineList, response_model_exclude_none=True)
async def list_routines(engine: EngineDep) -> schemas.RoutineList:
    return schemas.RoutineList(routines=[_info(r) for r in engine.routines.values()])


@router.get("/routines/{name}", response_model=schemas.RoutineInfo,
            response_model_exclude_none=True, responses={404: _ERRORS[404]})
async def get_routine(name: str, engine: EngineDep) -> schemas.RoutineInfo:
    return _info(engine.routine(name))


@router.get("/strategies", response_model=schemas.StrategyList)
async def list_strategies(engine: EngineDep) -> schemas.StrategyList:
    return schemas.StrategyList(default="auto", strategies=[
        schemas.StrategyInfo(
            name=i.strategy.name, mode=i.strategy.mode, cost=i.strategy.cost,
            description=i.strategy.description, cap=i.cap,
            cap_setting=f"DYDC_{i.cap_setting.upper()}" if i.cap_setting else None,
            batchable=i.strategy.batchable,
        )
        for i in engine.strategies()
    ])
