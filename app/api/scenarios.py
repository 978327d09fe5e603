"""``POST /v1/routines/{name}/scenarios``: the book revalued under every scenario in one
launch, with its P&L and, asked for, the P&L explained by the base's Taylor terms
(app.engine.runtime.scenarios does the work; this codec only translates JSON)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
import orjson
from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, StrictBool
from torch import Tensor

from app.api import schemas, tensor_answer
from app.api.answer_size import JSON_NUMBER_BYTES, answer_arrays, echoed_numbers
from app.api.computation import computation_route
from app.api.decoding import decode_inputs, parse_document
from app.api.encoding import array_of, job_fields
from app.api.instrumentation import RequestLabels
from app.api.pipeline import Decoded, Incoming, Reply
from app.api.sensitivity_options import BUMP_OPTIONS, with_query
from app.api.sensitivity_options import QUERY as _OPTIONS_QUERY
from app.api.v1 import _COMPUTE_QUERY, _ERRORS, V1, _sample_watch, _timeout_ms
from app.engine import Engine, Job, JobKind, Request
from app.engine.errors import CostExceeded, InvalidRequest
from app.engine.runtime import scenarios
from app.errors import ResponseTooLarge
from routines import Routine

__all__ = [
    "RESPONSES",
    "SCENARIOS",
    "Asked",
    "ScenarioFields",
    "ScenariosRequest",
    "V1Scenarios",
    "answered",
    "router",
    "scenario_plan",
    "too_many_scenarios",
]

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


class ScenarioFields(BaseModel):
    """What a scenarios body adds to a sensitivities body (a routine's or an expression's)."""

    model_config = ConfigDict(extra="forbid")
    scenarios: ScenarioSpec = Field(description="The scenarios to revalue the book under.")
    explain: StrictBool = Field(
        False, description="Add each scenario's Taylor prediction from the base's "
        "derivatives (delta_pnl; gamma_pnl at order 2) and what it leaves unexplained; wrt "
        "defaults to the shifted factors.")
    totals_only: StrictBool = Field(
        False, description="Answer each scenario's shifts and total_* sums only, without "
        "the arrays of one number per sample (base, values, pnl, the explain's delta_pnl, "
        "gamma_pnl, unexplained and the base's derivatives): a portfolio's P&L in a few "
        "hundred bytes.")


class ScenariosRequest(schemas.SensitivityRequest, ScenarioFields):
    pass


def _factors(spec: ScenarioSpec) -> list[str]:
    """The shifted factors, in the order the request names them."""
    if spec.shifts is not None:
        return list(spec.shifts)
    return list(dict.fromkeys(f for scenario in spec.list_ or [] for f in scenario))


@dataclass
class Asked:
    """A scenarios request as planned, and the form of its answer."""

    plan: scenarios.ScenarioPlan
    tensors: bool = False  # the tensor form (app.api.tensor_answer), else JSON
    totals_only: bool = False
    expression: str | None = None  # a caller's expression: its canonical text
    started: float = 0.0  # when its request began (timing_ms.total counts from here)
    labels: RequestLabels | None = None  # what the access log and metrics report of it


def _check_unexplained_query(query: Mapping[str, str]) -> None:
    """Without the explain no derivative is taken: a strategy (other than the default) or a
    bump setting would go unused, and is refused (they were taken and ignored, a misspelt
    strategy included). The body's wrt, order and cross are checked, not refused: one body
    may serve /sensitivities and /scenarios (scenarios.check_unexplained_options)."""
    given = [k for k in ("strategy", *BUMP_OPTIONS) if k in query
             and not (k == "strategy" and query[k] == "auto")]
    if given:
        raise InvalidRequest(
            f"{', '.join(given)} shape{'s' if len(given) == 1 else ''} the derivatives of the "
            "P&L explain, and this request has none: send \"explain\": true, or leave "
            f"{'it' if len(given) == 1 else 'them'} out")


def _check_explain_query(query: Mapping[str, str]) -> None:
    """Bump settings shape finite differences, which this route runs as a strategy only (it
    has no check=): said so here, where the engine's refusal would offer the check."""
    given = [k for k in BUMP_OPTIONS if k in query]
    if given and query.get("strategy") != "finite-difference":
        raise InvalidRequest(
            f"{', '.join(given)} configure{'s' if len(given) == 1 else ''} the bumps of "
            "finite differences: use "
            f"{'it' if len(given) == 1 else 'them'} with strategy=finite-difference (this "
            "route has no check)")


def scenario_plan(engine: Engine, routine: Routine, target: str | Routine,
                  document: ScenarioFields, inputs: np.ndarray, query: Mapping[str, str],
                  max_scenarios: int) -> scenarios.ScenarioPlan:
    """The base job and the S x N job of a validated scenarios body (``document``: a
    routine's or an expression's) over the samples ``inputs``; ``target`` is what the engine
    runs (a registered routine's name, or a caller's routine)."""
    assert isinstance(document, schemas.SensitivityRequest)
    spec = document.scenarios
    expanded = scenarios.expand(
        None if spec.shifts is None else {f: (s.type, s.values)
                                          for f, s in spec.shifts.items()},
        spec.combine if "combine" in spec.model_fields_set else None, spec.list_,
        max_scenarios)
    evaluate = engine.prepare(Request(JobKind.EVALUATE, target, inputs, document.params,
                                      dtype=document.dtype, timeout_ms=_timeout_ms(query)))
    # before the explain's wrt, which defaults to the factors: an unknown one is the shift's
    scenarios.check_factors(evaluate.routine, expanded)
    base = evaluate
    if document.explain and document.wrt == []:
        raise InvalidRequest(
            "wrt is empty; name the parameters or inputs to explain the P&L by, or omit wrt "
            f"to explain it by the shifted factors ({', '.join(_factors(spec))})")
    if document.explain:  # wrt defaults to the shifted factors
        _check_explain_query(query)
        base = engine.prepare(with_query(Request(
            JobKind.SENSITIVITIES, target, inputs, document.params,
            wrt=_factors(spec) if document.wrt is None else document.wrt,
            dtype=document.dtype, timeout_ms=_timeout_ms(query), order=document.order,
            cross=document.cross), query))
    else:
        scenarios.check_unexplained_options(evaluate.routine, document.wrt, document.order,
                                            document.cross)
        _check_unexplained_query(query)

    def shifted(x: Tensor, params: dict[str, float | np.ndarray]) -> Job:
        try:
            return engine.over(evaluate, x, params)
        except CostExceeded as exc:  # said in the request's terms, not the launch's
            if exc.estimate_s is None or exc.limit_s is None:
                raise
            s, n = len(expanded), evaluate.n
            raise CostExceeded(
                f"revaluing {s} scenarios x {n} samples ({s * n} evaluations of "
                f"{evaluate.routine.called}) is estimated at {exc.estimate_s:.3g} s of device "
                f"time, over the limit of {exc.limit_s:g} s (DYDC_MAX_JOB_COST); send fewer "
                "scenarios or samples per request", exc.estimate_s, exc.limit_s) from None

    return scenarios.plan(routine, base, expanded, shifted,
                          max_samples=engine.limits.max_samples, explain=document.explain)


def too_many_scenarios(doc: Any, max_scenarios: int) -> Any:
    """``doc`` (a parsed body), refused before its validation if one of its lists of shifts
    or its list of scenarios is longer than DYDC_MAX_SCENARIOS: each makes at least as many
    scenarios (a product, a zip or the list itself), and validating millions of numbers
    only to refuse them held a thread for seconds."""
    spec = doc.get("scenarios") if isinstance(doc, dict) else None
    if not isinstance(spec, dict):
        return doc
    lists = [spec.get("list")]
    if isinstance(spec.get("shifts"), dict):
        lists += [s.get("values") for s in spec["shifts"].values() if isinstance(s, dict)]
    longest = max((len(v) for v in lists if isinstance(v, list)), default=0)
    if longest > max_scenarios:
        raise InvalidRequest(
            f"at least {longest} scenarios; the limit is {max_scenarios} per request "
            "(DYDC_MAX_SCENARIOS): split the scenarios over requests")
    return doc


class V1Scenarios(V1):
    def __init__(self) -> None:
        super().__init__(JobKind.EVALUATE)
        self.endpoint = "scenarios"

    def _plan(self, engine: Engine, routine: Routine, body: bytes, query: Mapping[str, str],
              max_scenarios: int) -> Asked:
        document = schemas.validate_request(
            ScenariosRequest, too_many_scenarios(parse_document(body), max_scenarios))
        plan = scenario_plan(engine, routine, routine.name, document,
                             decode_inputs(document.inputs), query, max_scenarios)
        return Asked(plan, totals_only=document.totals_only)

    async def decode(self, request: Incoming, engine: Engine) -> Decoded:
        started = time.perf_counter()
        routine = engine.routine(request.path_params["name"])
        request.labels.routine = routine.name
        body = await request.body.read(_sample_watch(request.settings.max_samples))
        # in a thread whatever the body's size: a small book under many scenarios is many
        # samples to lay out (see scenarios.OFF_LOOP_SAMPLES)
        asked = await asyncio.to_thread(self._plan, engine, routine, body, request.query,
                                        request.settings.max_scenarios)
        return answered(asked, request, started)

    async def run(self, engine: Engine,  # type: ignore[override]
                  decoded: Decoded) -> Answered:
        """The scenarios' result, and the answer made from it: in a thread when there are
        many samples (its arrays are copied into the answer)."""
        asked: Asked = decoded.context
        result = await scenarios.run(asked.plan, engine.run)
        plan = asked.plan
        if asked.labels is not None:  # every sample revalued; the explain's strategy
            asked.labels.took(plan.shifted.n, result.queue_s, result.compute_s)
            asked.labels.strategy = (result.base.strategy or "none") if plan.explain \
                else "none"
        if plan.base.n * len(plan.scenarios) >= scenarios.OFF_LOOP_SAMPLES:
            return await asyncio.to_thread(_reply, asked, result)
        return _reply(asked, result)

    def encode(self, decoded: Decoded, result: Answered,  # type: ignore[override]
               started: float) -> Reply:
        return result.reply


@dataclass
class Answered:
    """A scenarios request's answer, made as soon as its result was known."""

    reply: Reply


def _reply(asked: Asked, result: scenarios.ScenarioResult) -> Answered:
    """The answer in the form the Accept header chose, which says so (``Vary: Accept``),
    so that a cache hands no client the other form."""
    doc = _document(asked, result)
    if asked.tensors:
        body, headers = tensor_answer.encode(doc)
        return Answered(Reply(200, body, tensor_answer.TENSORS, {**headers, **_VARY}))
    return Answered(Reply(200, orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY),
                          "application/json", dict(_VARY)))


_VARY = {"Vary": "Accept"}


def answered(asked: Asked, request: Incoming, started: float) -> Decoded:
    """The request's job, its answer's form read from its Accept, and that answer priced;
    ``started``: when the request began."""
    asked.started = started
    asked.labels = request.labels
    asked.tensors = tensor_answer.wants_tensors(request.headers)
    _check_answer(asked, request.settings.max_response_bytes)
    return Decoded(asked.plan.shifted, asked)


def _check_answer(asked: Asked, limit: int) -> None:
    """The answer's numbers, as JSON or as tensors: per scenario its values and P&L (with
    the explain three more arrays), and the base's values and derivatives (none of these
    with totals_only); whatever it holds, the absolute shifts of every factor shifted per
    sample (an input feature, or a per-sample parameter), one array of N a scenario, and the
    per-sample parameters echoed."""
    plan = asked.plan
    job = plan.base
    n, m = job.n, len(job.routine.outputs)
    per_number = job.dtype.itemsize if asked.tensors else JSON_NUMBER_BYTES
    form = "tensors" if asked.tensors else "JSON"
    arrays = 0 if asked.totals_only else 5 if plan.explain else 2
    base = 0 if asked.totals_only else answer_arrays(job) * n * m
    shifts = sum(v.size for row in plan.absolute for v in row.values()
                 if isinstance(v, np.ndarray))
    numbers = len(plan.scenarios) * n * m * arrays + base + shifts \
        + echoed_numbers(job) * n
    estimate = numbers * per_number
    if estimate > limit:
        raise ResponseTooLarge(
            f"the answer would be about {estimate} bytes ({len(plan.scenarios)} scenarios x "
            f"{n} samples x {m} outputs x {arrays} arrays, and {shifts} per-sample shifts, "
            f"as {form}); the limit is {limit} (DYDC_MAX_RESPONSE_BYTES). Ask for less: "
            + ", ".join(_smaller(asked, shifts > 0)))


def _smaller(asked: Asked, per_sample_shifts: bool) -> list[str]:
    """What a request whose answer is too large can ask for instead."""
    options = ["fewer scenarios or samples per request"]
    if asked.plan.explain and not asked.totals_only:
        options.append("explain: false")
    if not asked.totals_only:
        options.append("totals_only: true")
    if not asked.tensors:
        options.append(f"Accept: {tensor_answer.TENSORS}")
    if per_sample_shifts:
        options.append("shifts of parameters shared by every sample rather than of input "
                       "features")
    return options


def _totals(t: Tensor | None) -> list[Any]:
    """Per scenario of the sums ``t`` (S, M) over samples (the engine's, checked finite): a
    number (M = 1), or one per output."""
    if t is None:
        return []
    totals = t.numpy()
    return totals[:, 0].tolist() if totals.shape[1] == 1 else list(totals)


def _shift(value: float | np.ndarray) -> Any:
    return value if isinstance(value, np.ndarray) else float(value)


_PER_SAMPLE = ("values", "pnl", "delta_pnl", "gamma_pnl", "unexplained")


def _document(asked: Asked, result: scenarios.ScenarioResult) -> dict[str, Any]:
    """The answer as a document (arrays as numpy arrays); with totals_only, without the
    arrays of one number per sample."""
    plan = asked.plan
    base = result.base
    job = plan.base
    rows = []
    total_pnl, total_delta, total_gamma, total_unexplained = (
        _totals(result.totals.get(name)) for name in ("pnl", "delta_pnl", "gamma_pnl",
                                                      "unexplained"))
    for s, shifts in enumerate(plan.absolute):
        row: dict[str, Any] = {
            "shifts": {f: _shift(v) for f, v in shifts.items()},
            "values": array_of(result.values[s]),
            "pnl": array_of(result.pnl[s]),
            "total_pnl": total_pnl[s],
        }
        if result.delta_pnl is not None and result.unexplained is not None:
            row["delta_pnl"] = array_of(result.delta_pnl[s])
            row["total_delta_pnl"] = total_delta[s]
            if result.gamma_pnl is not None:
                row["gamma_pnl"] = array_of(result.gamma_pnl[s])
                row["total_gamma_pnl"] = total_gamma[s]
            row["unexplained"] = array_of(result.unexplained[s])
            row["total_unexplained"] = total_unexplained[s]
        if asked.totals_only:
            row = {k: v for k, v in row.items() if k not in _PER_SAMPLE}
        rows.append(row)
    doc: dict[str, Any] = {"routine": job.routine.name}
    if asked.expression is not None:
        doc["expression"] = asked.expression
    doc |= job_fields(job, base.device)
    doc["scenario_count"] = len(plan.scenarios)
    if not asked.totals_only:
        doc["base"] = array_of(base.values)
    doc["scenarios"] = rows
    doc["total_pnl"] = [row["total_pnl"] for row in rows]
    if plan.explain:
        doc["strategy"] = base.strategy
        doc["wrt"] = list(job.wrt)
        doc["order"] = job.order
        if job.bump is not None and base.strategy == "finite-difference":
            doc["bump"] = job.bump.echo(job.dtype, job.order)  # what ran, as sensitivities
        if not asked.totals_only:
            doc["derivatives"] = {k: array_of(d) for k, d in base.derivatives.items()}
            if job.order == 2:
                doc["second_derivatives"] = {k: array_of(d)
                                             for k, d in base.second_derivatives.items()}
    doc["timing_ms"] = {"compute": round(result.compute_s * 1e3, 3),
                        "total": round((time.perf_counter() - asked.started) * 1e3, 3)}
    return doc


SCENARIOS = V1Scenarios()

# The answer's two forms, for OpenAPI (the JSON answer's fields: docs/sensitivities.md)
RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The scenarios' values and P&L. JSON by default; with Accept: "
          f"{tensor_answer.TENSORS}, the same document with its arrays of numbers as "
          "binary tensors after a JSON header of Inference-Header-Content-Length bytes.",
          "content": {"application/json": {"schema": {"type": "object"}},
                      tensor_answer.TENSORS: {"schema": {"type": "string", "format": "binary"}}}},
    **_ERRORS,
}


computation_route(
    router, "/routines/{name}/scenarios", SCENARIOS, "scenarios_route",
    """The book (inputs) revalued under every scenario in one launch: base values, each
    scenario's values and P&L (values minus base), total P&L per scenario, and with
    ``explain`` the Taylor terms of the P&L from the base's derivatives and what they leave
    unexplained. ``Accept: application/vnd.dydc.tensors`` answers the same document with its
    arrays as binary tensors; ``totals_only`` leaves out the arrays of one number per
    sample.""",
    responses=RESPONSES,
    openapi_extra={"parameters": _COMPUTE_QUERY + _OPTIONS_QUERY[:3], "requestBody": {
        "required": True, "content": {"application/json": {
            "schema": ScenariosRequest.model_json_schema(
                ref_template="#/components/schemas/{model}")}}}},
)
