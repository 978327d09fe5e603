"""``dydc.Client`` and ``dydc.AsyncClient`` read DYDC_URL and DYDC_API_KEY as the command line
does; an explicit argument wins (``api_key=""`` sends no key)."""

from __future__ import annotations

import asyncio

import dydc
import httpx
import pytest

ROUTINES = {"routines": []}


def recorder(seen: list[httpx.Request]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=ROUTINES)

    return httpx.MockTransport(handle)


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYDC_URL", "http://dydc.example:8312/")
    monkeypatch.setenv("DYDC_API_KEY", "from-the-environment")


@pytest.mark.usefixtures("environment")
def test_the_variables_are_the_defaults() -> None:
    seen: list[httpx.Request] = []
    with dydc.Client(transport=recorder(seen)) as client:
        client.routines()
    assert str(seen[0].url) == "http://dydc.example:8312/v1/routines"
    assert seen[0].headers["Authorization"] == "Bearer from-the-environment"


@pytest.mark.usefixtures("environment")
def test_arguments_win() -> None:
    seen: list[httpx.Request] = []
    with dydc.Client("http://127.0.0.1:9", api_key="given", transport=recorder(seen)) as c:
        c.routines()
    with dydc.Client(api_key="", transport=recorder(seen)) as c:
        c.routines()
    assert str(seen[0].url) == "http://127.0.0.1:9/v1/routines"
    assert seen[0].headers["Authorization"] == "Bearer given"
    assert "Authorization" not in seen[1].headers


@pytest.mark.usefixtures("environment")
def test_the_async_client_reads_them_too() -> None:
    seen: list[httpx.Request] = []

    async def call() -> None:
        def handle(request: httpx.Request) -> httpx.Response:
            seen.append(request)
            return httpx.Response(200, json=ROUTINES)

        async with dydc.AsyncClient(transport=httpx.MockTransport(handle)) as client:
            await client.routines()

    asyncio.run(call())
    assert str(seen[0].url) == "http://dydc.example:8312/v1/routines"
    assert seen[0].headers["Authorization"] == "Bearer from-the-environment"


def test_without_them_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DYDC_URL", raising=False)
    monkeypatch.delenv("DYDC_API_KEY", raising=False)
    seen: list[httpx.Request] = []
    with dydc.Client(transport=recorder(seen)) as client:
        client.routines()
    assert str(seen[0].url) == "http://127.0.0.1:8000/v1/routines"
    assert "Authorization" not in seen[0].headers
