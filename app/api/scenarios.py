"""``POST /v1/routines/{name}/scenarios``: the book revalued under every scenario in one
launch, with its P&L and, asked for, the P&L explained by the base's Taylor terms
(app.engine.scenarios does the work; this codec only translates JSON)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import numpy as np
import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool
from starlette.responses import Response
from torch import Tensor

from app.api import schemas
from app.api.answer_size import JSON_NUMBER_BYTES
from app.api.decoding import decode_inputs, parse_document
from app.api.encoding import array_of
from app.api.pipeline import Decoded, Incoming, Reply, offload, respond
from app.api.sensitivity_options import engine_arguments
from app.api.v1 import _COMPUTE_QUERY, _ERRORS, V1, _sample_watch, _timeout_ms
from app.engine import Engine, JobKind, scenarios
from app.errors import ResponseTooLarge
from routines import Routine

__all__ = ["SCENARIOS", "ScenariosRequest", "router"]

router = APIRouter(prefix="/v1", tags=["v1"])

Number = schemas.Number


class ShiftSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["absolute", "relative"] = Field(
        description="absolute: added to the value; relative: a fraction of it (0.1 = +10%).")
    values: Annotated[list[Number], Field(min_length=1)] = Field(
        description="One shift per scenario (zip) or per point of the grid (product).")


class ScenarioSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    shifts: dict[str, ShiftSpec] | None = Field(
        None, description="Per parameter or input feature, its shifts.")
    combine: Literal["product", "zip"] = Field(
        "product", description="product: every combination of the factors' shifts; zip: "
        "scenario i takes the i-th shift of every factor (lists of equal length).")
    list_: list[dict[str, Number]] | None = Field(
        None, alias="list", description="Instead of shifts: one object of absolute shifts "
        "per scenario.")


class ScenariosRequest(schemas.SensitivityRequest):
    scenarios: ScenarioSpec = Field(description="The scenarios to revalue the book under.")
    explain: StrictBool = Field(
        False, description="Add each scenario's Taylor prediction from the base's "
        "derivatives (delta_pnl; gamma_pnl at order 2) and what it leaves unexplained; wrt "
        "defaults to the shifted factors.")


def _factors(spec: ScenarioSpec) -> list[str]:
    """The shifted factors, in the order the request names them."""
    if spec.shifts is not None:
        return list(spec.shifts)
    return list(dict.fromkeys(f for scenario in spec.list_ or [] for f in scenario))


class V1Scenarios(V1):
    def __init__(self) -> None:
        super().__init__(JobKind.EVALUATE)
        self.endpoint = "scenarios"

    def _plan(self, engine: Engine, routine: Routine, body: bytes, query: Mapping[str, str],
              loop: asyncio.AbstractEventLoop, max_scenarios: int) -> scenarios.ScenarioPlan:
        document = schemas.validate_request(ScenariosRequest, parse_document(body))
        spec = document.scenarios
        expanded = scenarios.expand(
            None if spec.shifts is None else {f: (s.type, s.values)
                                              for f, s in spec.shifts.items()},
            spec.combine, spec.list_, max_scenarios)
        timeout_ms = _timeout_ms(query)
        inputs = decode_inputs(document.inputs)
        if document.explain:
            base = engine.prepare(
                JobKind.SENSITIVITIES, routine.name, inputs, document.params,
                wrt=document.wrt or _factors(spec), strategy=query.get("strategy", "auto"),
                dtype=document.dtype, timeout_ms=timeout_ms, loop=loop,
                **engine_arguments(query, document.order, document.cross))
        else:
            base = engine.prepare(JobKind.EVALUATE, routine.name, inputs, document.params,
                                  dtype=document.dtype, timeout_ms=timeout_ms, loop=loop)

        def prepare_shifted(x: np.ndarray, params: dict[str, float | np.ndarray]) -> Any:
            return engine.prepare(JobKind.EVALUATE, routine.name, x, params,
                                  dtype=document.dtype, timeout_ms=timeout_ms, loop=loop)

        return scenarios.plan(routine, base, expanded, prepare_shifted,
                              max_samples=engine.limits.max_samples,
                              explain=document.explain)

    async def decode(self, request: Incoming, engine: Engine) -> Decoded:
        routine = engine.routine(request.path_params["name"])
        request.labels.routine = routine.name
        body = await request.body.read(_sample_watch(request.settings.max_samples))
        plan = await offload(len(body), self._plan, engine, routine, body, request.query,
                             asyncio.get_running_loop(), request.settings.max_scenarios)
        _check_answer(plan, request.settings.max_response_bytes)
        return Decoded(plan.shifted, plan)

    async def run(self, engine: Engine,  # type: ignore[override]
                  decoded: Decoded) -> scenarios.ScenarioResult:
        return await scenarios.run(decoded.context, engine.run)

    def encode(self, decoded: Decoded, result: scenarios.ScenarioResult,  # type: ignore[override]
               started: float) -> Reply:
        return Reply(200, _encode(decoded.context, result, started), "application/json")


def _check_answer(plan: scenarios.ScenarioPlan, limit: int) -> None:
    """Values and P&L per scenario (with the explain three more arrays), as JSON."""
    n, m = plan.base.n, len(plan.base.routine.outputs)
    arrays = 5 if plan.explain else 2
    estimate = len(plan.scenarios) * n * m * arrays * JSON_NUMBER_BYTES
    if estimate > limit:
        raise ResponseTooLarge(
            f"the answer would be about {estimate} bytes ({len(plan.scenarios)} scenarios x "
            f"{n} samples x {m} outputs x {arrays} arrays as JSON); the limit is {limit} "
            "(DYDC_MAX_RESPONSE_BYTES). Ask for less: fewer scenarios or samples per request, "
            "or explain: false")


def _total(t: Tensor) -> Any:
    """The sum over samples: a number (M = 1), or one per output."""
    total = t.sum(dim=0).numpy()
    return float(total[0]) if total.shape[0] == 1 else total


def _shift(value: float | np.ndarray) -> Any:
    return value if isinstance(value, np.ndarray) else float(value)


def _encode(plan: scenarios.ScenarioPlan, result: scenarios.ScenarioResult,
            started: float) -> bytes:
    base = result.base
    job = plan.base
    rows = []
    for s, shifts in enumerate(plan.absolute):
        row: dict[str, Any] = {
            "shifts": {f: _shift(v) for f, v in shifts.items()},
            "values": array_of(result.values[s]),
            "pnl": array_of(result.pnl[s]),
            "total_pnl": _total(result.pnl[s]),
        }
        if result.delta_pnl is not None and result.unexplained is not None:
            row["delta_pnl"] = array_of(result.delta_pnl[s])
            row["total_delta_pnl"] = _total(result.delta_pnl[s])
            if result.gamma_pnl is not None:
                row["gamma_pnl"] = array_of(result.gamma_pnl[s])
                row["total_gamma_pnl"] = _total(result.gamma_pnl[s])
            row["unexplained"] = array_of(result.unexplained[s])
            row["total_unexplained"] = _total(result.unexplained[s])
        rows.append(row)
    doc: dict[str, Any] = {
        "routine": job.routine.name,
        "dtype": str(job.dtype).removeprefix("torch."),
        "device": base.device,
        "n": job.n,
        "params": job.params,
        "outputs": list(job.routine.outputs),
        "scenario_count": len(plan.scenarios),
        "base": array_of(base.values),
        "scenarios": rows,
        "total_pnl": [row["total_pnl"] for row in rows],
    }
    if plan.explain:
        doc["strategy"] = base.strategy
        doc["wrt"] = list(job.wrt)
        doc["order"] = job.order
        doc["derivatives"] = {k: array_of(d) for k, d in base.derivatives.items()}
        if job.order == 2:
            doc["second_derivatives"] = {k: array_of(d)
                                         for k, d in base.second_derivatives.items()}
    doc["timing_ms"] = {"compute": round(result.compute_s * 1e3, 3),
                        "total": round((time.perf_counter() - started) * 1e3, 3)}
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


SCENARIOS = V1Scenarios()


@router.post(
    "/routines/{name}/scenarios",
    responses=_ERRORS,
    openapi_extra={"parameters": _COMPUTE_QUERY, "requestBody": {"required": True, "content": {
        "application/json": {"schema": ScenariosRequest.model_json_schema(
            ref_template="#/components/schemas/{model}")}}}},
)
async def scenarios_route(name: str, request: Request) -> Response:
    """The book (inputs) revalued under every scenario in one launch: base values, each
    scenario's values and P&L (values minus base), total P&L per scenario, and with
    ``explain`` the Taylor terms of the P&L from the base's derivatives and what they leave
    unexplained."""
    return await respond(SCENARIOS, request, name=name)
