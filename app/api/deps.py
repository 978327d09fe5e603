"""What routes need, as named types. The providers are ``async def`` so that FastAPI calls
them on the event loop instead of hopping to its thread pool for each. The computation
routes, which serve thousands of requests a second, call ``engine_of``/``settings_of``
directly: FastAPI's dependency and query-parameter machinery cost them about 0.15 ms a
request, more than all their own work."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.config import Settings
from app.engine import Engine

__all__ = ["EngineDep", "SettingsDep", "engine_of", "settings_of"]


def engine_of(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_engine(request: Request) -> Engine:
    return engine_of(request)


async def get_settings(request: Request) -> Settings:
    return settings_of(request)


EngineDep = Annotated[Engine, Depends(get_engine)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
