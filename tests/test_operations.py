"""Liveness, readiness and the Prometheus scrape."""

from __future__ import annotations

import threading

import httpx
import pytest

import app.main
from tests.support import ClientFactory, scrape, value

pytestmark = pytest.mark.anyio


async def test_health_and_ready(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    r = await client.get("/readyz")
    assert r.status_code == 200 and r.json() == {"status": "ready", "device": "cpu"}


async def test_not_ready_until_warm(make_client: ClientFactory,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    warm = threading.Event()
    monkeypatch.setattr(app.main, "warm_up", lambda routines, device, **_: warm.wait(30))
    from asgi_lifespan import LifespanManager

    from app.config import Settings

    application = app.main.create_app(Settings(device="cpu"))
    async with LifespanManager(application) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            r = await c.get("/readyz")
            assert r.status_code == 503
            assert r.headers["content-type"] == "application/problem+json"
            assert "warming up" in r.json()["detail"]
            assert (await c.get("/healthz")).status_code == 200
            warm.set()
            import anyio

            with anyio.fail_after(10):
                while (await c.get("/readyz")).status_code != 200:
                    await anyio.sleep(0.01)


async def test_metrics_scrape(client: httpx.AsyncClient) -> None:
    before = scrape((await client.get("/metrics")).text)
    ok = await client.post("/v1/routines/linear/sensitivities",
                           json={"inputs": [1, 2, 3], "params": {"C": 2}})
    assert ok.status_code == 200
    bad = await client.post("/v1/routines/linear/sensitivities?strategy=nope",
                            json={"inputs": [1]})
    assert bad.status_code == 422
    missing = await client.post("/v1/routines/ghost/sensitivities", json={"inputs": [1]})
    assert missing.status_code == 404
    r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    after = scrape(r.text)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("dydc_requests_total", routine="linear", strategy="forward", status="200") == 1
    assert delta("dydc_requests_total", routine="linear", strategy="invalid", status="422") == 1
    assert delta("dydc_requests_total", routine="unknown", status="404") == 1
    assert delta("dydc_samples_total", routine="linear", strategy="forward") == 3
    assert delta("dydc_request_duration_seconds_count", routine="linear",
                 endpoint="sensitivities") == 2
    assert delta("dydc_compute_duration_seconds_count", routine="linear", strategy="forward") == 1
    assert value(after, "dydc_requests_in_flight") == 0
    assert "dydc_queue_depth" in after
    assert all(name.startswith(("dydc_", "python_", "process_"))
               for name in after), sorted(after)


async def test_gc_threshold_setting(make_client: ClientFactory) -> None:
    import gc

    before = gc.get_threshold()
    try:
        async with make_client(gc_threshold=12345, warmup=False) as c:
            assert (await c.get("/healthz")).status_code == 200
            assert gc.get_threshold()[0] == 12345
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
