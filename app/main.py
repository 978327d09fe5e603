"""The application factory. ``uvicorn app.main:app`` serves ``app``; nothing heavy happens at
import: routines are discovered, the device is chosen and warmed inside the lifespan."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import torch
from fastapi import FastAPI

from app import __version__
from app.api import health, v1
from app.config import Settings
from app.engine import DeviceWorker, Engine, Limits, resolve_device, warm_up
from app.errors import install_error_handlers
from routines import discover

__all__ = ["app", "create_app"]

_CAPPED = ("reverse-loop", "reverse-batched", "jacrev")


def _limits(settings: Settings) -> Limits:
    caps = {}
    for name in _CAPPED:
        field = name.replace("-", "_") + "_max_n"
        caps[name] = (field, int(getattr(settings, field)))
    return Limits(max_samples=settings.max_samples, caps=caps)


def create_app(settings: Settings | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        s = settings or Settings()
        if s.torch_threads:
            torch.set_num_threads(s.torch_threads)
        routines = discover()
        device = resolve_device(s.device)
        worker = DeviceWorker(device, warmup=partial(warm_up, routines) if s.warmup else None)
        app.state.settings = s
        app.state.engine = Engine(routines, _limits(s), worker)
        worker.start()
        try:
            yield
        finally:
            await asyncio.to_thread(worker.stop)

    app = FastAPI(
        title="dydc",
        version=__version__,
        summary="dy/dC for a whole batch: derivatives of numerical routines over HTTP.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(v1.router)
    app.include_router(health.router)
    return app


app = create_app()
