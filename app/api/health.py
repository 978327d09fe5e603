"""Liveness, readiness and the Prometheus scrape."""

from __future__ import annotations

from typing import Any

import torch
from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.responses import Response

from app import metrics
from app.api.deps import EngineDep
from app.errors import ProblemDetails, problem_response, with_instance

__all__ = ["router"]

router = APIRouter(tags=["operations"])


@router.head("/healthz", operation_id="healthz_head")
@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """200 while the process serves."""
    return {"status": "ok"}


_NOT_READY: dict[int | str, dict[str, Any]] = {
    503: {"description": "Not ready; the detail says why"}}


@router.head("/readyz", operation_id="readyz_head", responses=_NOT_READY)
@router.get("/readyz", responses=_NOT_READY)
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


@router.get("/metrics", response_class=Response)
async def scrape(engine: EngineDep) -> Response:
    for device in engine.devices:
        if device.type == "cuda":
            metrics.DEVICE_MEMORY_BYTES.labels(str(device)).set(
                torch.cuda.memory_allocated(device))
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
