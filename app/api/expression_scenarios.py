"""``POST /v1/expressions/scenarios``: a caller's expression (or ODE) revalued under every
scenario in one launch, with the routine route's body, answer and rules
(app.api.scenarios), plus the expression's canonical text."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter

from app.api import scenarios
from app.api.computation import computation_route
from app.api.decoding import parse_json
from app.api.expression_schemas import ExpressionRequest
from app.api.expressions import (
    EXAMPLE,
    METRICS_ROUTINE,
    expressions_for,
    input_samples,
    make_routine,
)
from app.api.pipeline import Decoded, Incoming
from app.api.schemas import validate_request
from app.api.sensitivity_options import QUERY as _OPTIONS_QUERY
from app.api.v1 import _COMPUTE_QUERY
from app.engine import Engine
from app.expressions import Expressions

__all__ = ["EXPRESSION_SCENARIOS", "ExpressionScenariosRequest", "router"]


class ExpressionScenariosRequest(ExpressionRequest, scenarios.ScenarioFields):
    """An expression's body (expression or ode, inputs with names and values, params, dtype)
    plus the scenarios; shifts name parameters or input features."""


class ExpressionScenarios(scenarios.V1Scenarios):
    def _plan_expression(self, engine: Engine, expressions: Expressions, body: bytes,
                         query: Mapping[str, str],
                         max_scenarios: int) -> scenarios.Asked:
        document = validate_request(ExpressionScenariosRequest, scenarios.too_many_scenarios(
            parse_json(body), max_scenarios))
        names = document.inputs.names
        made = make_routine(expressions, document.expression,
                            None if document.ode is None else document.ode.model_dump(),
                            names, list(document.params))
        plan = scenarios.scenario_plan(engine, made.routine, made.routine, document,
                                       input_samples(document.inputs.values, names), query,
                                       max_scenarios)
        return scenarios.Asked(plan, totals_only=document.totals_only,
                               expression=made.canonical)

    async def decode(self, request: Incoming, engine: Engine) -> Decoded:
        started = time.perf_counter()
        request.labels.routine = METRICS_ROUTINE
        body = await request.body.read()
        # in a thread whatever the body's size, as for routines
        asked = await asyncio.to_thread(self._plan_expression, engine,
                                        expressions_for(request.settings), body, request.query,
                                        request.settings.max_scenarios)
        return scenarios.answered(asked, request, started)


EXPRESSION_SCENARIOS = ExpressionScenarios()

router = APIRouter(prefix="/v1/expressions", tags=["v1 expressions"])

_EXAMPLE: dict[str, Any] = {
    **EXAMPLE,
    "scenarios": {"shifts": {"r": {"type": "relative", "values": [-0.1, 0.1]},
                             "t": {"type": "absolute", "values": [0.0, 1.0]}}},
    "explain": True,
}


computation_route(
    router, "/scenarios", EXPRESSION_SCENARIOS, "expression_scenarios",
    """The caller's expression (or ODE) over the book (inputs) under every scenario in one
    launch: the routine route's answer (base, each scenario's values, P&L and with
    ``explain`` its Taylor terms), plus ``expression``, the canonical text.""",
    responses={k: v for k, v in scenarios.RESPONSES.items() if k != 404},  # no routine
    openapi_extra={"parameters": _COMPUTE_QUERY + _OPTIONS_QUERY[:3], "requestBody": {
        "required": True, "content": {"application/json": {
            "schema": ExpressionScenariosRequest.model_json_schema(
                ref_template="#/components/schemas/{model}"),
            "example": _EXAMPLE}}}},
)
