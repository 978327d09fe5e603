"""Every Prometheus metric of the service, declared once, all prefixed ``dydc_``."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "COMPUTE_SECONDS",
    "DEVICE_MEMORY_BYTES",
    "QUEUE_DEPTH",
    "REQUESTS",
    "REQUESTS_IN_FLIGHT",
    "REQUEST_SECONDS",
    "SAMPLES",
]

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)

REQUESTS = Counter(
    "dydc_requests_total",
    "Computation requests answered, by routine, strategy (the one that ran) and HTTP status.",
    ["routine", "strategy", "status"],
)
REQUEST_SECONDS = Histogram(
    "dydc_request_duration_seconds",
    "Wall time of computation requests, from the first byte read to the response written.",
    ["routine", "endpoint"],
    buckets=_LATENCY_BUCKETS,
)
COMPUTE_SECONDS = Histogram(
    "dydc_compute_duration_seconds",
    "Time on the device worker per request (values and derivatives, results back on the CPU).",
    ["routine", "strategy"],
    buckets=_LATENCY_BUCKETS,
)
SAMPLES = Counter(
    "dydc_samples_total",
    "Samples (rows of inputs) processed successfully.",
    ["routine", "strategy"],
)
REQUESTS_IN_FLIGHT = Gauge(
    "dydc_requests_in_flight",
    "Computation requests being served right now.",
)
QUEUE_DEPTH = Gauge(
    "dydc_queue_depth",
    "Jobs waiting for the device worker.",
)
DEVICE_MEMORY_BYTES = Gauge(
    "dydc_device_memory_bytes",
    "CUDA memory allocated by tensors on the worker's device (only exported on CUDA).",
    ["device"],
)
