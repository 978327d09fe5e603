"""The application factory. ``uvicorn app.main:app`` serves ``app``; nothing heavy happens at
import: routines are discovered, the devices chosen and warmed inside the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from functools import partial
from types import FrameType

import torch
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.logging import DefaultFormatter

from app import __version__
from app.api import expression_scenarios, expressions, health, limits, scenarios, v1
from app.api.bodies import BodyBudget
from app.api.dispatch import App
from app.api.docs import install_docs
from app.api.openapi import install_openapi
from app.api.v2 import expression as v2_expression
from app.api.v2 import routes as v2
from app.config import Settings, load_settings
from app.engine import (
    STRATEGIES,
    CompiledForward,
    CostModel,
    DeviceUnavailable,
    Engine,
    Executor,
    JobQueue,
    Limits,
    WorkerPool,
    cache_host_allocations,
    load_torch_extensions,
    resolve_devices,
    warm_up,
)
from app.engine.compiled.builds import ProcessBuilder
from app.engine.compiled.cache import (
    CacheDirError,
    default_cache_dir,
    prepare_cache_dir,
    use_private_compile_caches,
)
from app.engine.compiled.pacing import Pacer
from app.errors import install_error_handlers
from app.http.access_log import flush_access_log
from app.http.stack import wrap
from app.http.tracing import TracingUnavailable
from app.server import ConnectionLimits, install
from routines import RoutineDefinitionError, discover

__all__ = ["Service", "StartupError", "app", "create_app"]

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


def _configure_logging(settings: Settings) -> None:
    """The service's own lines (the ``app`` loggers: draining, builds, failures) at
    DYDC_LOG_LEVEL on stderr, in uvicorn's format, however uvicorn was started (it configures
    only its own loggers); a handler the operator configured on the root logger is used
    instead. Under ``uvicorn app.main:app``, DYDC_LOG_LEVEL given explicitly sets uvicorn's
    own loggers too (``python -m app`` hands it to uvicorn)."""
    level = settings.log_level.upper()
    own = logging.getLogger("app")
    own.setLevel(level)
    if not own.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(DefaultFormatter("%(levelprefix)s %(message)s"))
        own.addHandler(handler)
        own.propagate = False
    if "log_level" in settings.model_fields_set:
        for name in ("uvicorn", "uvicorn.error"):
            logging.getLogger(name).setLevel(level)


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


class StartupError(Exception):
    """Start-up cannot go on; the message is the one line the server logs (no traceback)."""


class Service(App):
    """The application with the operator's middlewares (app.http) around all of it, the bare
    computation path included; a start-up failure is reported as its one line."""

    http_stack: ASGIApp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.http_stack(scope, receive, send)
            return

        async def send_one_line(message: Message) -> None:
            failure = getattr(self.state, "startup_error", None)
            if message["type"] == "lifespan.startup.failed" and failure is not None:
                message = {**message, "message": str(failure)}
            await send(message)

        await super().__call__(scope, receive, send_one_line)


def create_app(settings: Settings | None = None) -> Service:
    """The service for ``settings`` (default: the environment, where a bad value ends the
    process with one line)."""
    s = settings or load_settings()
    _configure_logging(s)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # before the server opens its sockets: `uvicorn app.main:app` as well as python -m app
        install(ConnectionLimits(s.read_timeout_s, s.max_connections, s.max_header_bytes),
                error_writers)
        if s.torch_threads:
            torch.set_num_threads(s.torch_threads)
        try:
            routines = discover(folders=s.routine_folders)
            devices = resolve_devices(s.device)
            cache_dir = (prepare_cache_dir(s.compile_cache_dir or default_cache_dir())
                         if s.compile else None)
        except (RoutineDefinitionError, DeviceUnavailable, CacheDirError) as exc:
            # a setting this host cannot serve: one line, as for an invalid value
            app.state.startup_error = StartupError(f"cannot start: {exc}")
            raise app.state.startup_error from None
        if cache_dir is not None:  # before the first compile, below
            use_private_compile_caches(cache_dir)
        load_torch_extensions(compiled=s.compile)
        if s.host_allocator_cache:
            cache_host_allocations()
        _tune_gc(s.gc_threshold)
        # a job priced over two slices runs alone, in slices, light work between them
        queue = JobQueue(s.max_queue_samples, s.max_batch_samples, s.max_delay_ms / 1e3,
                         heavy_cost_s=2 * s.slice_ms / 1e3)
        compiled: CompiledForward | None = None
        if cache_dir is not None:
            builder = ProcessBuilder(cache_dir,
                                     niceness=s.compile_build_niceness,
                                     idle=s.compile_build_idle)
            compiled = CompiledForward(
                s.compile_chunk, s.compile_min_samples, builder=builder,
                pacer=Pacer(builder.process, s.compile_build_share),
                max_graphs=s.compile_max_graphs, recheck_every=s.compile_recheck_every,
                hot_launches=s.compile_hot_launches)
        bounds = _limits(s)
        costs = CostModel(bounds.max_job_cost_s)
        executors = [Executor(device, s.max_batch_samples, compiled, s.slice_ms / 1e3)
                     for device in devices]
        pool = WorkerPool(executors, queue,
                          warmup=(partial(warm_up, routines, costs=costs,
                                          compile=s.compile_warmup)
                                  if s.warmup else None),
                          costs=costs, slice_s=s.slice_ms / 1e3,
                          inline_s=s.inline_launch_ms / 1e3)
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
            flush_access_log()  # the answers sent at the end of the grace period included

    app = Service(
        title="dydc",
        version=__version__,
        summary="dy/dC for a whole batch: derivatives of numerical routines over HTTP.",
        lifespan=lifespan,
        docs_url=None,  # served offline by app.api.docs
        redoc_url=None,
        redirect_slashes=False,  # a redirect would be built from the Host header
    )
    app.state.settings = s
    # each API's error writer by the prefix it mounts: for the routes' exception handlers and
    # for the middlewares that refuse a request before any route has run
    error_writers = {"/v2": v2.error_response}
    install_error_handlers(app, error_writers)
    app.include_router(v1.router)
    app.include_router(expressions.router)
    app.include_router(scenarios.router)
    app.include_router(expression_scenarios.router)
    app.include_router(v2_expression.router)  # before v2's /models/{name}/infer
    app.include_router(v2.router)
    app.include_router(health.router)
    app.include_router(limits.router)
    install_docs(app)
    install_openapi(app, s)
    try:
        app.http_stack = wrap(partial(App.__call__, app), s, error_writers)
    except TracingUnavailable as exc:  # one line, as for a bad setting
        print(f"dydc: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    return app


app = create_app()
