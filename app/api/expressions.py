"""The expression routes: a caller's own function, differentiated like any routine.

:class:`ExpressionV1` is the JSON codec of ``POST /v1/expressions/{sensitivities, evaluate,
compare}`` over the one request pipeline (app.api.pipeline). Its decode turns the body's
``expression`` (or ``ode``) into a routine through :class:`app.expressions.Expressions` (an
LRU: the same canonical expression is the same routine object, so the same batch key) and
then asks the engine for the job exactly as the routine routes do, so that cost admission,
deadlines, cancellation and coalescing hold unchanged. The answer is a routine's, with the
expression's canonical text.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
from fastapi import APIRouter

from app.api.answer_size import check_json_answer
from app.api.computation import computation_route
from app.api.decoding import decode_inputs, parse_json
from app.api.deps import SettingsDep
from app.api.encoding import encode_comparison, encode_result
from app.api.expression_schemas import (
    BoundInfo,
    ExpressionCompareResponse,
    ExpressionEvaluateResponse,
    ExpressionRequest,
    ExpressionSensitivityResponse,
    FunctionList,
)
from app.api.pipeline import EXPRESSION_OFFLOAD_BYTES, Decoded, Incoming, Reply, offload
from app.api.schemas import validate_request
from app.api.sensitivity_options import QUERY as _OPTIONS_QUERY
from app.api.sensitivity_options import with_query
from app.api.v1 import _COMPUTE_QUERY, _ERRORS, _timeout_ms
from app.config import Settings
from app.engine import STRATEGIES, Comparison, Engine, Job, JobKind, JobResult, Request
from app.engine.errors import InvalidRequest
from app.errors import PROBLEM_JSON, ProblemDetails, problem_body
from app.expressions import Bounds, ExpressionRoutine, Expressions, OdeSpec, catalogue

__all__ = [
    "EXPRESSION_COMPARE",
    "EXPRESSION_EVALUATE",
    "EXPRESSION_SENSITIVITIES",
    "METRICS_ROUTINE",
    "ExpressionV1",
    "expressions_for",
    "input_samples",
    "make_routine",
    "router",
]

# The routine label of the request metrics: one for every expression, so that callers'
# texts cannot grow the metrics without bound.
METRICS_ROUTINE = "expression"


@functools.lru_cache(maxsize=4)
def _expressions(bounds: Bounds, cache_size: int) -> Expressions:
    return Expressions(bounds, cache_size)


def expressions_for(settings: Settings) -> Expressions:
    """The parser (and its LRU) for ``settings``' bounds: one per process and bounds."""
    return _expressions(Bounds.from_settings(settings), settings.expression_cache)


def make_routine(
    expressions: Expressions,
    expression: Any,
    ode: Mapping[str, Any] | None,
    inputs: list[str],
    params: list[str],
) -> ExpressionRoutine:
    """The routine for ``expression``, or for ``ode`` (an object with rhs, state, initial,
    time, steps, method), of the input features ``inputs`` and parameters ``params``."""
    if (expression is None) == (ode is None):
        raise InvalidRequest(
            "send one of expression (a formula, or a list of them) and ode "
            "(an object with rhs, state, initial, time, steps, method)"
        )
    if ode is None:
        return expressions.expression(expression, inputs, params)
    return expressions.ode(OdeSpec(**ode), inputs, params)


def input_samples(values: Any, names: list[str]) -> np.ndarray:
    """An expression body's ``inputs.values`` as an (N,) or (N, D) array, D the number of
    ``inputs.names`` (a flat list is one feature's N values): the samples of every expression
    route (sensitivities, evaluate, compare, scenarios). Raises InvalidRequest (a 422) naming
    the mismatch when the rows do not hold one number per name."""
    x = decode_inputs(values)
    d = len(names)
    if x.ndim == 1 and x.shape[0] > 0 and d > 1:
        raise InvalidRequest(
            f"inputs.values is a flat list, but inputs.names declares {d} features "
            f"({', '.join(names)}); send inputs.values as a list of rows of {d} numbers"
        )
    if x.ndim == 2 and x.shape[1] != d:
        raise InvalidRequest(
            f"inputs.values rows have {x.shape[1]} numbers, but inputs.names declares {d} "
            f"feature{'s' if d > 1 else ''} ({', '.join(names)}); send one number per name, "
            "in that order"
        )
    return x


class ExpressionV1:
    """v1 JSON for expressions: the body of :class:`ExpressionRequest` and the query options
    of the routine routes in; the routine's answer plus ``expression`` out."""

    query_options: frozenset[str] | None = None  # (app.api.computation)

    def __init__(self, kind: JobKind, compare: bool = False) -> None:
        self.kind = kind
        self.compare = compare
        self.endpoint = "compare" if compare else kind.value

    def _prepare(
        self,
        engine: Engine,
        expressions: Expressions,
        body: bytes,
        query: Mapping[str, str],
    ) -> tuple[Job, str]:
        document = validate_request(ExpressionRequest, parse_json(body))
        names = document.inputs.names
        made = make_routine(
            expressions,
            document.expression,
            None if document.ode is None else document.ode.model_dump(),
            names,
            list(document.params),
        )
        request = Request(self.kind, made.routine, input_samples(document.inputs.values, names),
                          document.params, dtype=document.dtype,
                          timeout_ms=_timeout_ms(query))
        if self.kind is JobKind.SENSITIVITIES:
            request = with_query(replace(request, wrt=document.wrt, order=document.order,
                                         cross=document.cross), query, compare=self.compare)
        job = engine.prepare(request)
        return job, made.canonical

    async def decode(self, request: Incoming, engine: Engine) -> Decoded:
        labels = request.labels
        labels.routine = METRICS_ROUTINE
        if self.kind is JobKind.SENSITIVITIES and not self.compare:
            strategy = request.query.get("strategy", "auto")
            labels.strategy = strategy if strategy in STRATEGIES else "invalid"
        body = await request.body.read()
        job, canonical = await offload(
            len(body),
            self._prepare,
            engine,
            expressions_for(request.settings),
            body,
            request.query,
            at=EXPRESSION_OFFLOAD_BYTES,
        )
        check_json_answer(job, request.settings.max_response_bytes)
        return Decoded(job, canonical)

    async def run(self, engine: Engine, decoded: Decoded) -> JobResult | Comparison:
        if self.compare:
            return await engine.compare(decoded.job)
        return await engine.run(decoded.job)

    def encode(self, decoded: Decoded, result: JobResult | Comparison, started: float) -> Reply:
        if isinstance(result, Comparison):
            body = encode_comparison(decoded.job, result, decoded.context)
        else:
            body = encode_result(decoded.job, result, started, decoded.context)
        return Reply(200, body, "application/json")

    def error(self, problem: ProblemDetails) -> Reply:
        return Reply(problem.status, problem_body(problem), PROBLEM_JSON, problem.headers)


EXPRESSION_SENSITIVITIES = ExpressionV1(JobKind.SENSITIVITIES)
EXPRESSION_EVALUATE = ExpressionV1(JobKind.EVALUATE)
EXPRESSION_COMPARE = ExpressionV1(JobKind.SENSITIVITIES, compare=True)


# -- routes (app.api.computation: for OpenAPI, and for app.api.dispatch) ------------------------

router = APIRouter(prefix="/v1/expressions", tags=["v1 expressions"])


def _openapi(query: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "parameters": query,
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": ExpressionRequest.model_json_schema(
                        ref_template="#/components/schemas/{model}"
                    ),
                    "example": EXAMPLE,
                }
            },
        },
    }


# v1's errors but 404: these paths name no routine
_EXPRESSION_ERRORS: dict[int | str, dict[str, Any]] = {
    k: v for k, v in _ERRORS.items() if k != 404}

EXAMPLE: dict[str, Any] = {
    "expression": "K / (1 + (K - N0) / N0 * exp(-r * t))",
    "inputs": {"names": ["N0", "t"], "values": [[10, 1.0], [10, 2.5]]},
    "params": {"r": 0.5, "K": 100.0},
    "wrt": ["r", "K"],
}


computation_route(
    router, "/sensitivities", EXPRESSION_SENSITIVITIES, "sensitivities",
    """Values and derivatives of the caller's expression (or ODE) for every sample.""",
    response_model=ExpressionSensitivityResponse,
    responses=_EXPRESSION_ERRORS,
    openapi_extra=_openapi(_COMPUTE_QUERY + _OPTIONS_QUERY),
)
computation_route(
    router, "/evaluate", EXPRESSION_EVALUATE, "evaluate",
    """Values only.""",
    response_model=ExpressionEvaluateResponse,
    responses=_EXPRESSION_ERRORS,
    openapi_extra=_openapi(_COMPUTE_QUERY[1:]),
)
computation_route(
    router, "/compare", EXPRESSION_COMPARE, "compare",
    """Every strategy that applies, side by side, as for a routine.""",
    response_model=ExpressionCompareResponse,
    responses=_EXPRESSION_ERRORS,
    openapi_extra=_openapi(_COMPUTE_QUERY[1:] + _OPTIONS_QUERY[:3]),
)


_BOUNDS = (
    (
        "max_chars",
        "expression_max_chars",
        "Characters of an expression (a list's, or an ODE's rhs and initial, together).",
    ),
    (
        "max_nodes",
        "expression_max_nodes",
        "Numbers, names, operations and calls in one expression.",
    ),
    ("max_depth", "expression_max_depth", "Nesting of operations and calls."),
    ("max_ode_steps", "expression_max_ode_steps", "Steps of the ODE form."),
    (
        "max_exponent",
        "expression_max_exponent",
        "A literal exponent of ** or pow, in absolute value.",
    ),
)


@router.get("/functions", response_model=FunctionList)
async def functions(settings: SettingsDep) -> FunctionList:
    """What the language offers: functions, constants, operators, and its bounds here."""
    bounds = {
        key: BoundInfo(
            value=getattr(settings, field), setting=f"DYDC_{field.upper()}", description=text
        )
        for key, field, text in _BOUNDS
    }
    return FunctionList.model_validate({**catalogue(), "bounds": bounds})
