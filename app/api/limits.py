"""``GET /v1/limits``: the sizes the service accepts, so that a client can split a large batch
into requests that fit instead of learning them from a 413 or a 422."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from app.api.answer_size import JSON_NUMBER_BYTES
from app.api.deps import EngineDep, SettingsDep

__all__ = ["ServiceLimits", "router"]

router = APIRouter(prefix="/v1", tags=["v1"])


class ServiceLimits(BaseModel):
    max_samples: int = Field(description="Largest N per request (DYDC_MAX_SAMPLES; 413 above).")
    max_body_bytes: int = Field(
        description="Largest request body (DYDC_MAX_BODY_BYTES; 413 above).")
    max_batch_samples: int = Field(
        description="Samples per device launch (DYDC_MAX_BATCH_SAMPLES); larger requests run "
        "in chunks of it.")
    max_queue_samples: int = Field(
        description="Samples queued before new requests get 503 (DYDC_MAX_QUEUE_SAMPLES).")
    request_timeout_ms: float = Field(
        description="Default and largest deadline (DYDC_REQUEST_TIMEOUT_MS; 504 past it).")
    strategy_caps: dict[str, int] = Field(
        description="Largest N per request for each capped strategy (422 above).")
    max_job_cost_s: float = Field(
        description="Most estimated device seconds one request may cost (DYDC_MAX_JOB_COST; "
        "422 above).")
    strategies: list[str] = Field(
        description="The strategies this server serves (DYDC_STRATEGIES; 422 for others).")
    max_response_bytes: int = Field(
        description="Largest answer, priced before the job runs (DYDC_MAX_RESPONSE_BYTES; 422 "
        "above): N x outputs x arrays asked (values, derivatives, second-order pairs) x the "
        "bytes of a number, json_number_bytes as JSON, the item size as binary tensors.")
    json_number_bytes: int = Field(
        description="What the price of an answer counts for a number written as JSON.")


@router.get("/limits", response_model=ServiceLimits)
async def limits(settings: SettingsDep, engine: EngineDep) -> ServiceLimits:
    """The sizes this service accepts: split larger batches into requests under them."""
    return ServiceLimits(
        max_samples=settings.max_samples,
        max_body_bytes=settings.max_body_bytes,
        max_batch_samples=settings.max_batch_samples,
        max_queue_samples=settings.max_queue_samples,
        request_timeout_ms=settings.request_timeout_ms,
        strategy_caps={i.strategy.name: i.cap for i in engine.strategies() if i.cap is not None},
        max_job_cost_s=settings.max_job_cost,
        strategies=[i.strategy.name for i in engine.strategies() if i.enabled],
        max_response_bytes=settings.max_response_bytes,
        json_number_bytes=JSON_NUMBER_BYTES,
    )
