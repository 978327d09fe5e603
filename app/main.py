"""The application factory. ``uvicorn app.main:app`` serves ``app``; nothing heavy happens at
import: routines are discovered, the devices chosen and warmed inside the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from functools import partial
from types import FrameType

import torch
from fastapi import FastAPI

from app import __version__
from app.api import health, limits, v1, v2
from app.api.bodies import BodyBudget
from app.api.dispatch import App
from app.api.v2.routes import error_response as v2_error_response
from app.config import Settings
from app.server import ConnectionLimits, install
from app.engine import (
    STRATEGIES,
    CompiledForward,
    CostModel,
    Engine,
    JobQueue,
    Limits,
    WorkerPool,
    cache_host_allocations,
    load_torch_extensions,
    resolve_devices,
    warm_up,
)
from app.engine.compile_cache import default_cache_dir, prepare_cache_dir
from app.errors import install_error_handlers
from routines import discover

__all__ = ["app", "create_app"]

log = logging.getLogger(__name__)

_SUPERVISE_EVERY_S = 0.2


def _limits(settings: Settings) -> Limits:
    """The strategies' caps come from the one table that names their settings
    (``Strategy.cap_setting``)."""
    caps = {s.name: (s.cap_setting, int(getattr(settings, s.cap_setting)))
            for s in STRATEGIES.values() if s.cap_setting is not None}
    return Limits(max_samples=settings.max_samples, caps=caps,
                  timeout_s=settings.request_timeout_ms / 1e3,
                  enabled=settings.enabled_strategies, max_job_cost_s=settings.max_job_cost)


@contextlib.contextmanager
def _drain_on_sigterm(pool: WorkerPool, grace_s: float) -> Iterator[None]:
    """On SIGTERM, readiness goes to 503 and new work is refused at once; then the server's
    own handler (uvicorn's) stops accepting connections and lets in-flight requests finish.
    What is still queued or running ``grace_s`` after the signal is answered 503."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)

    def handle(signum: int, frame: FrameType | None) -> None:
        log.info("SIGTERM: draining")
        pool.begin_drain(abort_after_s=grace_s)
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGTERM) is handle:
            signal.signal(signal.SIGTERM, previous)


def _tune_gc(threshold: int) -> None:
    """Each request allocates thousands of short-lived objects (torch.func wraps every tensor
    op); with Python's default young-generation threshold of 700 the collector ran so often,
    over every module object import left behind, that it cost a third of the throughput."""
    if threshold:
        gc.freeze()  # what is alive now (modules, routines) is never garbage: stop scanning it
        gc.set_threshold(threshold, *gc.get_threshold()[1:])


async def _supervise(pool: WorkerPool) -> None:
    while True:
        await asyncio.sleep(_SUPERVISE_EVERY_S)
        pool.revive()


def create_app(settings: Settings | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        s = settings or Settings()
        # before the server opens its sockets: `uvicorn app.main:app` as well as python -m app
        install(ConnectionLimits(s.read_timeout_s, s.max_connections))
        if s.torch_threads:
            torch.set_num_threads(s.torch_threads)
        load_torch_extensions()
        if s.host_allocator_cache:
            cache_host_allocations()
        routines = discover()
        _tune_gc(s.gc_threshold)
        queue = JobQueue(s.max_queue_samples, s.max_batch_samples, s.max_delay_ms / 1e3)
        compiled = (CompiledForward(
            s.compile_chunk, s.compile_min_samples,
            cache_dir=prepare_cache_dir(s.compile_cache_dir or default_cache_dir()),
            max_graphs=s.compile_max_graphs, recheck_every=s.compile_recheck_every)
            if s.compile else None)
        bounds = _limits(s)
        costs = CostModel(bounds.max_job_cost_s)
        pool = WorkerPool(resolve_devices(s.device), queue, s.max_batch_samples,
                          warmup=(partial(warm_up, routines,
                                          compiled=compiled if s.compile_warmup else None,
                                          costs=costs)
                                  if s.warmup else None),
                          compiled=compiled, costs=costs, slice_s=s.slice_ms / 1e3)
        app.state.settings = s
        app.state.bodies = BodyBudget(s.max_inflight_body_bytes)
        app.state.engine = Engine(routines, bounds, pool, costs)
        pool.start()
        supervisor = asyncio.create_task(_supervise(pool))
        try:
            with _drain_on_sigterm(pool, s.grace_period_s):
                yield
        finally:
            supervisor.cancel()
            await asyncio.to_thread(pool.stop, s.grace_period_s)
            if compiled is not None:
                compiled.close()

    app = App(
        title="dydc",
        version=__version__,
        summary="dy/dC for a whole batch: derivatives of numerical routines over HTTP.",
        lifespan=lifespan,
    )
    install_error_handlers(app, {"/v2": v2_error_response})
    app.include_router(v1.router)
    app.include_router(v2.router)
    app.include_router(health.router)
    app.include_router(limits.router)
    return app


app = create_app()
