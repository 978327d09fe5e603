"""The v1 REST API: routines, strategies, sensitivities and evaluation.

:class:`V1` is the JSON codec of the computation routes over the one request pipeline
(app.api.pipeline); the routes below declare their paths and describe them for OpenAPI
(app.api.computation).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fastapi import APIRouter

from app.api import schemas
from app.api.answer_size import check_json_answer
from app.api.computation import computation_route
from app.api.decoding import SampleCounter, decode_inputs, parse_document
from app.api.deps import EngineDep
from app.api.encoding import encode_comparison, encode_result
from app.api.pipeline import Decoded, Incoming, Reply, offload
from app.api.sensitivity_options import QUERY as _OPTIONS_QUERY
from app.api.sensitivity_options import with_query
from app.engine import (
    MIN_TIMEOUT_MS,
    STRATEGIES,
    Comparison,
    Engine,
    Job,
    JobKind,
    JobResult,
    Request,
)
from app.engine.errors import InvalidRequest, RequestTooLarge
from app.errors import PROBLEM_JSON, ProblemDetails, problem_body
from routines import Routine

__all__ = ["COMPARE", "EVALUATE", "SENSITIVITIES", "V1", "V1Compare", "router"]

router = APIRouter(prefix="/v1", tags=["v1"])

# Every error is a problem (app.errors.problem_body; its schema: app.api.openapi). 408 and
# 431 are written by the server and the header check before any route runs, on every path;
# they are declared here, on the routes that take a body, where a client meets them.
_PROBLEM: dict[str, Any] = {"content": {PROBLEM_JSON: {
    "schema": {"$ref": "#/components/schemas/Problem"}}}}
_RETRY_AFTER: dict[str, Any] = {"Retry-After": {
    "description": "Seconds to wait before retrying", "schema": {"type": "integer", "minimum": 1}}}
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "A gzip (or deflate) body followed by bytes that are not part of it",
          **_PROBLEM},
    404: {"description": "Unknown routine", **_PROBLEM},
    408: {"description": "The request (headers and body) did not arrive within "
                         "DYDC_READ_TIMEOUT_S; the connection is closed", **_PROBLEM},
    413: {"description": "Body or batch over the configured limits", **_PROBLEM},
    415: {"description": "Body not sent as application/json, or in an unsupported "
                         "Content-Encoding", **_PROBLEM},
    422: {"description": "Invalid request; the detail says what to change", **_PROBLEM},
    431: {"description": "More header fields than DYDC_MAX_HEADERS, or more bytes than "
                         "DYDC_MAX_HEADER_BYTES", **_PROBLEM},
    503: {"description": "Not ready, shutting down, or at a bound (queue, bodies in flight, "
                         "connections); Retry-After says when to retry",
          "headers": _RETRY_AFTER, **_PROBLEM},
    504: {"description": "The deadline passed before the answer", **_PROBLEM},
}

# The computation routes read their query options themselves (app.api.pipeline); these
# declare them in the OpenAPI document.
_COMPUTE_QUERY: list[dict[str, Any]] = [
    {"name": "strategy", "in": "query", "required": False,
     "schema": {"type": "string", "default": "auto", "enum": list(STRATEGIES)},
     "description": "How to differentiate (GET /v1/strategies)."},
    {"name": "timeout_ms", "in": "query", "required": False,
     "schema": {"type": "number", "minimum": MIN_TIMEOUT_MS},
     "description": f"Deadline in ms, at least {MIN_TIMEOUT_MS:g} (422 below) and at most "
                    "DYDC_REQUEST_TIMEOUT_MS (capped above): a request still queued or running "
                    "when it passes is dropped or stopped, and answered 504."},
]


def _timeout_ms(query: Mapping[str, str]) -> float | None:
    given = query.get("timeout_ms")
    if given is None:
        return None
    try:
        return float(given)
    except ValueError:
        raise InvalidRequest(f"timeout_ms = {given!r}; use a number of ms of at least "
                             f"{MIN_TIMEOUT_MS:g}") from None


def _sample_watch(limit: int) -> Callable[[bytes], None]:
    """A watch over a body's chunks (``BodyReader.read``) that refuses it with 413 once its
    samples, counted in the raw bytes as they arrive, are over ``limit``: before it is
    parsed, and as soon as its bytes prove it."""
    counter = SampleCounter()

    def watch(chunk: bytes) -> None:
        counter.feed(chunk)
        if counter.at_least > limit:
            count = (f"{counter.at_least}" if counter.done
                     else f"more than {limit}")
            raise RequestTooLarge(
                f"inputs has {count} samples; the limit is {limit} per request "
                "(DYDC_MAX_SAMPLES): split the batch"
            )

    return watch


class V1:
    """v1 JSON: a body ``{"inputs", "params", "wrt", "dtype"}`` and query options in, the
    values and derivatives as JSON out, problem details for errors."""

    query_options: frozenset[str] | None = None  # (app.api.computation)

    def __init__(self, kind: JobKind) -> None:
        self.kind = kind
        self.endpoint = kind.value
        self.compare = False  # prepared as compare's request (app.api.sensitivity_options)
        self._model = (schemas.SensitivityRequest if kind is JobKind.SENSITIVITIES
                       else schemas.EvaluateRequest)

    def _prepare(self, engine: Engine, routine: Routine, body: bytes,
                 query: Mapping[str, str]) -> Job:
        return engine.prepare(self.request(routine, body, query))

    def request(self, routine: Routine, body: bytes, query: Mapping[str, str]) -> Request:
        """The engine's request for ``body`` and ``query`` on ``routine``."""
        document = schemas.validate_request(self._model, parse_document(body))
        inputs = decode_inputs(document.inputs)
        if not isinstance(document, schemas.SensitivityRequest):
            return Request(self.kind, routine.name, inputs, document.params,
                           wrt=document.wrt,  # not used, but checked (Engine.prepare)
                           dtype=document.dtype, timeout_ms=_timeout_ms(query))
        return with_query(Request(self.kind, routine.name, inputs, document.params,
                                  wrt=document.wrt, dtype=document.dtype,
                                  timeout_ms=_timeout_ms(query), order=document.order,
                                  cross=document.cross), query, compare=self.compare)

    async def decode(self, request: Incoming, engine: Engine) -> Decoded:
        labels = request.labels
        routine = engine.routine(request.path_params["name"])
        labels.routine = routine.name
        if self.kind is JobKind.SENSITIVITIES:
            strategy = request.query.get("strategy", "auto")
            labels.strategy = strategy if strategy in STRATEGIES else "invalid"
        body = await request.body.read(_sample_watch(request.settings.max_samples))
        job = await offload(len(body), self._prepare, engine, routine, body, request.query)
        check_json_answer(job, request.settings.max_response_bytes)
        return Decoded(job)

    async def run(self, engine: Engine, decoded: Decoded) -> JobResult:
        return await engine.run(decoded.job)

    def encode(self, decoded: Decoded, result: JobResult, started: float) -> Reply:
        return Reply(200, encode_result(decoded.job, result, started), "application/json")

    def error(self, problem: ProblemDetails) -> Reply:
        return Reply(problem.status, problem_body(problem), PROBLEM_JSON, problem.headers)


class V1Compare(V1):
    """``compare``: the body of sensitivities; every strategy that applies, side by side."""

    def __init__(self) -> None:
        super().__init__(JobKind.SENSITIVITIES)
        self.endpoint = "compare"
        self.compare = True

    async def run(self, engine: Engine, decoded: Decoded) -> Comparison:  # type: ignore[override]
        return await engine.compare(decoded.job)

    def encode(self, decoded: Decoded, result: Comparison,  # type: ignore[override]
               started: float) -> Reply:
        return Reply(200, encode_comparison(decoded.job, result), "application/json")


SENSITIVITIES = V1(JobKind.SENSITIVITIES)
EVALUATE = V1(JobKind.EVALUATE)
COMPARE = V1Compare()


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


computation_route(
    router, "/routines/{name}/sensitivities", SENSITIVITIES, "sensitivities",
    """Values and dy/d<param> for every sample of the batch.""",
    response_model=schemas.SensitivityResponse,
    responses=_ERRORS,
    openapi_extra=_compute_openapi(schemas.SensitivityRequest, _COMPUTE_QUERY + _OPTIONS_QUERY),
)
computation_route(
    router, "/routines/{name}/evaluate", EVALUATE, "evaluate",
    """Values only.""",
    response_model=schemas.EvaluateResponse,
    responses=_ERRORS,
    openapi_extra=_compute_openapi(schemas.EvaluateRequest, _COMPUTE_QUERY[1:]),
)
computation_route(
    router, "/routines/{name}/compare", COMPARE, "compare",
    """Every strategy that applies, side by side: status, time and differences from forward
    mode; values and derivatives are forward mode's. The body is that of sensitivities.""",
    response_model=schemas.CompareResponse,
    responses=_ERRORS,
    openapi_extra=_compute_openapi(schemas.SensitivityRequest,
                                   _COMPUTE_QUERY[1:] + _OPTIONS_QUERY[:3]),
)


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
            batchable=i.strategy.batchable, enabled=i.enabled, order2=i.order2,
            per_sample_params=i.per_sample_params,
        )
        for i in engine.strategies()
    ])
