"""Optional OpenTelemetry tracing: when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set, each request
becomes a span through the ASGI instrumentation package, exported over OTLP/HTTP (the
exporter reads the standard ``OTEL_*`` variables itself). Off by default; the packages come
with the ``otel`` extra (``DYDC_EXTRAS=otel bash scripts/install.sh``)."""

from __future__ import annotations

import os

from starlette.types import ASGIApp

__all__ = ["ENDPOINT_VARIABLE", "TracingUnavailable", "traced"]

ENDPOINT_VARIABLE = "OTEL_EXPORTER_OTLP_ENDPOINT"


class TracingUnavailable(RuntimeError):
    """The endpoint is set but the otel extra is not installed."""


def traced(app: ASGIApp) -> ASGIApp:
    """``app`` inside OpenTelemetryMiddleware when the endpoint is set, else ``app``."""
    if not os.environ.get(ENDPOINT_VARIABLE):
        return app
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise TracingUnavailable(
            f"{ENDPOINT_VARIABLE} is set but OpenTelemetry is not installed ({exc}); install "
            "the otel extra (DYDC_EXTRAS=otel bash scripts/install.sh) or unset it"
        ) from None
    provider = TracerProvider(resource=Resource.create({"service.name": "dydc"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return OpenTelemetryMiddleware(app, tracer_provider=provider)  # type: ignore[no-any-return]
