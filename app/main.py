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
from app.api import health, v1, v2
from app.api.fastpath import App
from app.config import Settings
from app.engine import (
    CompiledForward,
    Engine,
    JobQueue,
    Limits,
    WorkerPool,
    cache_host_allocations,
    load_torch_extensions,
    resolve_devices,
    warm_up,
)
from app.engine.builds import ProcessBuilder
from app.engine.compile_cache import default_cache_dir, prepare_cache_dir
from app.errors import install_error_handlers
from routines import discover

__all__ = ["app", "create_app"]

log = logging.getLogger(__name__)

_CAPPED = ("reverse-loop", "reverse-batched", "jacrev")
_SUPERVISE_EVERY_S = 0.2


def _limits(settings: Settings) -> Limits:
    caps = {}
    for name in _CAPPED:
        field = name.replace("-", "_") + "_max_n"
        caps[name] = (field, int(getattr(settings, field)))
    return Limits(max_samples=settings.max_samples, caps=caps,
                  timeout_s=settings.request_timeout_ms / 1e3)


@contextlib.contextmanager
def _drain_on_sigterm(pool: WorkerPool) -> Iterator[None]:
    """On SIGTERM, readiness goes to 503 and new work is refused at once; then the server's
    own handler (uvicorn's) stops accepting connections and lets in-flight requests finish."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)

    def handle(signum: int, frame: FrameType | None) -> None:
        log.info("SIGTERM: draining")
        pool.begin_drain()
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
            builder=ProcessBuilder(prepare_cache_dir(s.compile_cache_dir or default_cache_dir()),
                                   niceness=s.compile_build_niceness),
            max_graphs=s.compile_max_graphs, recheck_every=s.compile_recheck_every)
            if s.compile else None)
        pool = WorkerPool(resolve_devices(s.device), queue, s.max_batch_samples,
                          warmup=(partial(warm_up, routines,
                                          compiled=compiled if s.compile_warmup else None)
                                  if s.warmup else None),
                          compiled=compiled)
        app.state.settings = s
        app.state.engine = Engine(routines, _limits(s), pool)
        pool.start()
        supervisor = asyncio.create_task(_supervise(pool))
        try:
            with _drain_on_sigterm(pool):
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
    install_error_handlers(app)
    app.include_router(v1.router)
    app.include_router(v2.router)
    app.include_router(health.router)
    return app


app = create_app()
