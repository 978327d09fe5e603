"""Every Prometheus metric of the service, declared once, all prefixed ``dydc_``."""

from __future__ import annotations

from functools import lru_cache
from typing import TypeVar

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "BATCH_REQUESTS",
    "BATCH_SAMPLES",
    "CANCELLED",
    "COMPILED_GRAPHS",
    "COMPILE_REFUSALS",
    "COMPILE_REFUSAL_REASONS",
    "COMPILE_SECONDS",
    "COMPUTE_SECONDS",
    "CONNECTIONS_CLOSED",
    "DEVICE_MEMORY_BYTES",
    "LAUNCHES",
    "LAUNCH_SECONDS",
    "QUEUE_BOUND_SAMPLES",
    "QUEUE_DEPTH",
    "QUEUE_HEAVY_SECONDS",
    "QUEUE_SAMPLES",
    "QUEUE_WAIT_SECONDS",
    "REJECTIONS",
    "REJECTION_REASONS",
    "REQUESTS",
    "REQUESTS_IN_FLIGHT",
    "REQUEST_SECONDS",
    "SAMPLES",
    "WORKERS_READY",
    "WORKER_RESTARTS",
    "child",
]

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)

REQUESTS = Counter(
    "dydc_requests_total",
    "Computation requests answered, by routine, strategy (the one that ran) and HTTP status; "
    "those the operator's middlewares refuse (401, 413, 415, 431) with routine unknown.",
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

# -- the device worker and its batching ---------------------------------------------------------

QUEUE_SAMPLES = Gauge("dydc_queue_samples", "Samples waiting for the device workers.")
QUEUE_BOUND_SAMPLES = Gauge(
    "dydc_queue_bound_samples", "Samples the queue holds before it refuses work (503)."
)
QUEUE_WAIT_SECONDS = Histogram(
    "dydc_queue_wait_seconds", "Time a request waited in the queue before its launch.",
    buckets=_LATENCY_BUCKETS,
)
BATCH_REQUESTS = Histogram(
    "dydc_batch_requests", "Requests coalesced into one device launch (a request run "
    "alone, in chunks or slices: one).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
BATCH_SAMPLES = Histogram(
    "dydc_batch_samples", "Samples in one device launch (a request run alone, in chunks or "
    "slices: all its samples, once).",
    buckets=tuple(4**k for k in range(11)),
)
LAUNCHES = Counter("dydc_launches_total", "Device launches (batches run; a request run alone, "
                   "in chunks or slices, counts once).", ["device"])
LAUNCH_SECONDS = Histogram(
    "dydc_launch_duration_seconds", "Compute time of one device launch (of a request run "
    "alone, in chunks or slices: all of them).", ["device"],
    buckets=_LATENCY_BUCKETS,
)
REJECTIONS = Counter(
    "dydc_rejections_total",
    "Requests refused or dropped unrun, by reason: queue_full (503), deadline (504 while "
    "queued), shutdown (503), cost (422, over DYDC_MAX_JOB_COST), body_bytes (503, over "
    "DYDC_MAX_INFLIGHT_BODY_BYTES), body_size (413, over DYDC_MAX_BODY_BYTES, compressed or "
    "inflated), samples (413, over DYDC_MAX_SAMPLES), response_bytes (422, over "
    "DYDC_MAX_RESPONSE_BYTES), headers (431, over DYDC_MAX_HEADERS or DYDC_MAX_HEADER_BYTES), "
    "strategy_cap (422, N over a strategy's cap), strategy_disabled (422, a strategy "
    "DYDC_STRATEGIES turns off).",
    ["reason"],
)
REJECTION_REASONS = ("queue_full", "deadline", "shutdown", "cost", "body_bytes", "body_size",
                     "samples", "response_bytes", "headers", "strategy_cap",
                     "strategy_disabled")
for _reason in REJECTION_REASONS:
    REJECTIONS.labels(_reason)
CANCELLED = Counter(
    "dydc_cancelled_total",
    "Jobs stopped after they started running, by reason: disconnect (the client went away), "
    "deadline (504), cost (422: its first slices showed it over DYDC_MAX_JOB_COST), shutdown "
    "(503 at the end of the grace period), answered (it already had its answer).",
    ["reason"],
)
for _reason in ("disconnect", "deadline", "cost", "shutdown", "answered"):
    CANCELLED.labels(_reason)
CONNECTIONS_CLOSED = Counter(
    "dydc_connections_closed_total",
    "Connections the server closed on its own, by reason: read_timeout (no complete request "
    "within DYDC_READ_TIMEOUT_S: 408), max_connections (over DYDC_MAX_CONNECTIONS: 503).",
    ["reason"],
)
for _reason in ("read_timeout", "max_connections"):
    CONNECTIONS_CLOSED.labels(_reason)
QUEUE_HEAVY_SECONDS = Gauge(
    "dydc_queue_heavy_seconds",
    "Estimated device seconds of heavy jobs (sliced: O(N^2) strategies, requests larger than "
    "a launch) queued or running.",
)
COMPILED_GRAPHS = Counter(
    "dydc_compiled_graphs_total",
    "Forward-mode graphs made ready for large launches (app.engine.compiled.forward), built or "
    "found in DYDC_COMPILE_CACHE_DIR, by routine.",
    ["routine"],
)
COMPILE_SECONDS = Histogram(
    "dydc_compile_duration_seconds",
    "Time to build and check a forward-mode graph, in the build process (no launch waits for "
    "it: launches of its kind run eagerly meanwhile).",
    buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300),
)
COMPILE_REFUSALS = Counter(
    "dydc_compile_refusals_total",
    "Kinds (routine, wrt, dtype, device, parameter layout) whose forward mode runs eagerly, "
    "by reason: trace, operations (too many to compile whole), compile, verification (the "
    "check before it served), recheck (a live launch disagreed with eager forward mode: the "
    "graph was retired), max_graphs (DYDC_COMPILE_MAX_GRAPHS reached).",
    ["reason"],
)
COMPILE_REFUSAL_REASONS = ("trace", "operations", "compile", "verification", "recheck",
                           "max_graphs")
for _reason in COMPILE_REFUSAL_REASONS:
    COMPILE_REFUSALS.labels(_reason)
WORKER_RESTARTS = Counter("dydc_worker_restarts_total", "Device workers restarted after dying.")
WORKERS_READY = Gauge("dydc_workers_ready", "Device workers up and warm.")


_M = TypeVar("_M", Counter, Gauge, Histogram)


@lru_cache(maxsize=4096)
def _child(metric: Counter | Gauge | Histogram, labels: tuple[str, ...]) -> object:
    return metric.labels(*labels)


def child(metric: _M, *labels: str) -> _M:
    """``metric.labels(*labels)``, remembered: prometheus-client checks, converts and locks on
    every call, which the computation routes paid several times a request. Label values here
    come from closed sets (routine names, strategies, statuses, devices)."""
    got: _M = _child(metric, labels)  # type: ignore[assignment]
    return got
