"""The type of conftest's ``make_client`` fixture, for tests' signatures."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import httpx

__all__ = ["ClientFactory"]

# ``async with make_client(max_samples=10) as client:`` an app with its own settings
ClientFactory = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]
