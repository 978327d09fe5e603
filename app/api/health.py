"""Liveness, readiness and the Prometheus scrape."""

from __future__ import annotations

from typing import Any

import torch
from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.responses import Response

from app import metrics
from app.api.deps import EngineDep
from app.errors import PROBLEM_JSON, ProblemDetails, problem_response, with_instance

__all__ = ["router"]

router = APIRouter(tags=["operations"])


@router.head("/healthz", operation_id="healthz_head")
@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """200 while the process serves."""
    return {"status": "ok"}


_READINESS: dict[int | str, dict[str, Any]] = {
    200: {"description": "Ready: the devices that serve", "content": {"application/json": {
        "schema": {"type": "object",
                   "properties": {"status": {"const": "ready"},
                                  "device": {"type": "string",
                                             "description": "The devices, separated by commas"}},
                   "required": ["status", "device"], "additionalProperties": False}}}},
    503: {"description": "Not ready; the detail says why",
          "headers": {"Retry-After": {"description": "Seconds to wait before asking again",
                                      "required": True,
                                      "schema": {"type": "integer", "minimum": 1}}},
          "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}},
}


@router.head("/readyz", operation_id="readyz_head", responses=_READINESS)
@router.get("/readyz", responses=_READINESS)
async def readyz(engine: EngineDep, request: Request) -> Response:
    """200 once the device worker is up and warm; 503 with the reason otherwise (with the
    request's id as ``instance``, as every problem)."""
    reason = engine.readiness()
    if reason is not None:
        return problem_response(with_instance(
            ProblemDetails(503, reason, "not-ready", {"Retry-After": "1"}), request.scope))
    devices = ",".join(str(d) for d in engine.devices)
    return Response(b'{"status":"ready","device":"%s"}' % devices.encode(),
                    media_type="application/json")


# The exposition's media type, without its charset (a parameter of the answer, not a type)
_EXPOSITION = CONTENT_TYPE_LATEST.removesuffix("; charset=utf-8")


@router.get("/metrics", response_class=Response, responses={200: {
    "description": "The Prometheus text exposition of every metric",
    "content": {_EXPOSITION: {"schema": {"type": "string"}}}}})
async def scrape(engine: EngineDep) -> Response:
    for device in engine.devices:
        if device.type == "cuda":
            metrics.DEVICE_MEMORY_BYTES.labels(str(device)).set(
                torch.cuda.memory_allocated(device))
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
