"""Optional OpenTelemetry tracing (app.http.tracing): off unless the endpoint is set."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from app.http.tracing import ENDPOINT_VARIABLE, TracingUnavailable, traced
from tests.support import ROOT

try:
    OTEL = importlib.util.find_spec("opentelemetry.instrumentation.asgi") is not None
except ModuleNotFoundError:  # no opentelemetry at all
    OTEL = False


async def _app(scope: object, receive: object, send: object) -> None:
    pass


def test_off_without_the_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENDPOINT_VARIABLE, raising=False)
    assert traced(_app) is _app  # type: ignore[arg-type]


@pytest.mark.skipif(OTEL, reason="the otel extra is installed")
def test_endpoint_without_the_extra_says_what_to_install(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENDPOINT_VARIABLE, "http://127.0.0.1:4318")
    with pytest.raises(TracingUnavailable, match="otel extra"):
        traced(_app)  # type: ignore[arg-type]


@pytest.mark.skipif(not OTEL, reason="needs the otel extra")
def test_endpoint_with_the_extra_wraps_the_app(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENDPOINT_VARIABLE, "http://127.0.0.1:4318")
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    assert isinstance(traced(_app), OpenTelemetryMiddleware)  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.skipif(OTEL, reason="the otel extra is installed")
def test_start_up_stops_with_one_line() -> None:
    env = {**os.environ, ENDPOINT_VARIABLE: "http://127.0.0.1:4318", "DYDC_DEVICE": "cpu"}
    done = subprocess.run([sys.executable, "-m", "uvicorn", "app.main:app", "--port", "0"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert ENDPOINT_VARIABLE in done.stderr and "Traceback" not in done.stderr
