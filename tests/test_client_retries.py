"""Retries and errors against stub services (httpx.MockTransport): 503 with Retry-After and
then 200, 504 only when asked, 4xx never, a refused connection; each error class from both
error formats. Backoffs are zero or seeded: nothing here reads a clock."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import dydc
import httpx
import numpy as np
import pytest
from dydc.retrying import RetryPolicy

from tests.support import free_port

pytestmark = pytest.mark.anyio

OK = {"routine": "linear", "strategy": "forward", "dtype": "float64", "device": "cpu", "n": 2,
      "params": {"C": 2.0}, "outputs": ["y"], "values": [2.0, 4.0],
      "derivatives": {"C": [1.0, 2.0]}, "timing_ms": {"queue": 0.1, "compute": 1.0,
                                                        "total": 2.0}}
LINEAR = {"name": "linear", "description": "y = C x", "inputs": ["x"], "outputs": ["y"],
          "params": [{"name": "C", "default": 1.0, "description": "slope"}], "vectorized": False}
LIMITS: dict[str, Any] = {"max_samples": 1000, "max_body_bytes": 1 << 20,
                          "strategy_caps": {}}


def problem(status: int, detail: str, **extra: Any) -> httpx.Response:
    return httpx.Response(status, json={"type": "urn:dydc:problem:x", "title": "T",
                                        "status": status, "detail": detail, **extra},
                          headers={"Content-Type": "application/problem+json"})


class Stub:
    """Answers /v1/limits, and each compute request with the next scripted answer."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.calls: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/limits":
            return httpx.Response(200, json=LIMITS)
        if request.url.path == "/v1/routines/linear":
            return httpx.Response(200, json=LINEAR)
        self.calls.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def client(stub: Callable[[httpx.Request], httpx.Response], **kw: Any) -> dydc.Client:
    return dydc.Client("http://stub", transport=httpx.MockTransport(stub),
                       **{"backoff": 0.0, "max_retry_after": 0.0, **kw})


def test_503_with_retry_after_then_200() -> None:
    stub = Stub(problem(503, "queue full", ), httpx.Response(200, json=OK))
    stub.answers[0].headers["Retry-After"] = "1"
    with client(stub) as c:
        result = c.sensitivities("linear", [1.0, 2.0], {"C": 2.0})
    assert len(stub.calls) == 2
    np.testing.assert_array_equal(result.derivatives["C"], [1.0, 2.0])
    assert stub.calls[0].content == stub.calls[1].content  # the same body again


def test_503_until_the_retries_run_out() -> None:
    stub = Stub(problem(503, "shutting down"))
    with client(stub, retries=2) as c, pytest.raises(dydc.Unavailable, match="shutting down"):
        c.sensitivities("linear", [1.0])
    assert len(stub.calls) == 3  # the first try and two retries


def test_504_retried_only_when_asked() -> None:
    stub = Stub(problem(504, "still queued at its deadline"), httpx.Response(200, json=OK))
    with client(stub) as c, pytest.raises(dydc.DeadlineExceeded) as caught:
        c.sensitivities("linear", [1.0, 2.0], {"C": 2.0})
    assert len(stub.calls) == 1 and caught.value.status == 504
    stub = Stub(problem(504, "still queued"), httpx.Response(200, json=OK))
    with client(stub, retry_on_timeout=True) as c:
        c.sensitivities("linear", [1.0, 2.0], {"C": 2.0})
    assert len(stub.calls) == 2


@pytest.mark.parametrize("status", [400, 401, 404, 413, 422, 429])
def test_4xx_never_retried(status: int) -> None:
    stub = Stub(problem(status, "no"), httpx.Response(200, json=OK))
    with client(stub) as c, pytest.raises(dydc.ApiError) as caught:
        c.sensitivities("linear", [1.0, 2.0])
    assert len(stub.calls) == 1 and caught.value.status == status


def test_connection_failures_retried_then_connection_failed() -> None:
    stub = Stub(httpx.ConnectError("refused"), httpx.Response(200, json=OK))
    with client(stub) as c:
        c.sensitivities("linear", [1.0, 2.0], {"C": 2.0})
    assert len(stub.calls) == 2
    stub = Stub(httpx.ReadTimeout("slow"), httpx.Response(200, json=OK))
    with client(stub) as c, pytest.raises(dydc.ConnectionFailed, match="ReadTimeout"):
        c.sensitivities("linear", [1.0, 2.0], {"C": 2.0})
    assert len(stub.calls) == 1  # a read timeout may be work in progress: not by default
    stub = Stub(httpx.WriteTimeout(""))  # (httpx's own often carry no text)
    with client(stub) as c, pytest.raises(
            dydc.ConnectionFailed, match=r"WriteTimeout: timed out: raise the client's timeout "
                                         r"\(after 1 attempt\)"):
        c.sensitivities("linear", [1.0, 2.0], {"C": 2.0})


def test_connection_refused() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with dydc.Client(url, retries=1, backoff=0.0) as c, \
            pytest.raises(dydc.ConnectionFailed, match=r"ConnectError.*after 2 attempts"):
        c.routines()


async def test_connection_refused_async() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with dydc.AsyncClient(url, retries=1, backoff=0.0) as c:
        with pytest.raises(dydc.ConnectionFailed):
            await c.sensitivities("linear", [1.0])


async def test_async_retries() -> None:
    stub = Stub(problem(503, "queue full"), problem(503, "queue full"),
                httpx.Response(200, json=OK))
    transport = httpx.MockTransport(stub)
    async with dydc.AsyncClient("http://stub", transport=transport, backoff=0.0) as c:
        result = await c.sensitivities("linear", [1.0, 2.0], {"C": 2.0})
    assert len(stub.calls) == 3 and result.values.tolist() == [2.0, 4.0]
    stub = Stub(problem(422, "inputs[0] is a string"))
    async with dydc.AsyncClient("http://stub", transport=httpx.MockTransport(stub)) as c:
        with pytest.raises(dydc.InvalidRequest, match=r"inputs\[0\]"):
            await c.evaluate("linear", [1.0])
    assert len(stub.calls) == 1


# -- the policy itself ---------------------------------------------------------------------------

def test_retry_after_honoured_and_capped() -> None:
    policy = RetryPolicy(retries=3, backoff=0.5, max_retry_after=5.0, rng=random.Random(1))
    assert 2.0 <= policy.wait_after(0, status=503, retry_after="2") <= 2.5  # type: ignore[operator]
    assert 5.0 <= policy.wait_after(0, status=503, retry_after="600") <= 5.5  # type: ignore[operator]
    soon = format_datetime(datetime.now(UTC) + timedelta(seconds=3), usegmt=True)
    assert 0.0 < policy.wait_after(1, status=503, retry_after=soon) <= 3.5  # type: ignore[operator]
    assert policy.wait_after(3, status=503) is None  # out of retries
    assert policy.wait_after(0, status=500) is None
    assert policy.wait_after(0, status=504) is None


def test_backoff_jittered_and_growing() -> None:
    policy = RetryPolicy(retries=10, backoff=0.5, max_backoff=4.0, rng=random.Random(7))
    waits = [[policy.wait_after(a, status=503) for _ in range(200)] for a in range(5)]
    for attempt, ws in enumerate(waits):
        bound = min(4.0, 0.5 * 2**attempt)
        assert all(0 <= w <= bound for w in ws)  # type: ignore[operator]
        assert len(set(ws)) > 150  # jittered, not one value
    assert max(waits[3]) > 2.0  # type: ignore[type-var]  (the bound grew from 0.5)
    with pytest.raises(ValueError, match="retries"):
        RetryPolicy(retries=-1)


# -- error classes and formats -------------------------------------------------------------------

@pytest.mark.parametrize(("status", "cls"), [
    (400, dydc.InvalidRequest), (401, dydc.Unauthorized), (404, dydc.NotFound),
    (413, dydc.TooLarge), (422, dydc.InvalidRequest), (503, dydc.Unavailable),
    (504, dydc.DeadlineExceeded), (500, dydc.ApiError), (418, dydc.ApiError),
])
def test_error_classes(status: int, cls: type[dydc.ApiError]) -> None:
    response = problem(status, "what to change", instance="urn:dydc:request:abc-123")
    stub = Stub(response)
    with client(stub, retries=0) as c, pytest.raises(cls) as caught:
        c.sensitivities("linear", [1.0])
    error = caught.value
    assert type(error) is cls and isinstance(error, dydc.ApiError)
    assert (error.status, error.detail, error.title) == (status, "what to change", "T")
    assert error.type == "urn:dydc:problem:x" and error.request_id == "abc-123"
    assert str(error) == f"{status} T: what to change"


def test_v2_error_format_and_request_id_header() -> None:
    stub = Stub(httpx.Response(400, json={"error": "inputs[0] (x) is FP16"},
                               headers={"X-Request-ID": "req-9"}))
    with client(stub, protocol="binary") as c, pytest.raises(dydc.InvalidRequest) as caught:
        c.sensitivities("linear", [1.0])
    assert stub.calls[0].url.path == "/v2/models/linear/infer"
    assert caught.value.detail == "inputs[0] (x) is FP16"
    assert caught.value.request_id == "req-9" and caught.value.title == "Bad Request"


def test_unauthorized_and_non_json_bodies() -> None:
    stub = Stub(httpx.Response(401, text="missing key", headers={"WWW-Authenticate": "Bearer"}))
    with client(stub) as c, pytest.raises(dydc.Unauthorized, match="missing key"):
        c.routines()
    stub = Stub(httpx.Response(502, text=""))
    with client(stub) as c, pytest.raises(dydc.ApiError, match="502 Bad Gateway: Bad Gateway"):
        c.strategies()


def test_api_key_sent_as_bearer() -> None:
    seen: list[str | None] = []

    def stub(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Authorization"))
        return httpx.Response(200, json={"routines": []})

    with dydc.Client("http://stub", api_key="s3cret", transport=httpx.MockTransport(stub)) as c:
        assert c.routines() == []
    with dydc.Client("http://stub", transport=httpx.MockTransport(stub)) as c:
        c.routines()
    assert seen == ["Bearer s3cret", None]
