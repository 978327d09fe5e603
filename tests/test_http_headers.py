"""The bound on header blocks (app.http.headers, and app.server on the wire): too many
fields, or too many bytes of them, get 431 before any route runs, under both of uvicorn's
HTTP implementations; an honest request, a large body in the head's packet included, is
served."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import sys
from collections.abc import Iterator

import httpx
import orjson
import pytest

from tests.support import (
    ClientFactory,
    ServerProcess,
    assert_error,
    assert_problem,
    free_port,
    server_process,
)

SENS = "/v1/routines/linear/sensitivities"


def _env(port: int) -> dict[str, str]:
    return {**os.environ, "DYDC_DEVICE": "cpu", "DYDC_WARMUP": "false",
            "DYDC_LOG_LEVEL": "warning", "DYDC_ACCESS_LOG": "false", "DYDC_PORT": str(port)}


@pytest.fixture(scope="module", params=["h11", "httptools"])
def server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "warning", "--http", request.param]
    with server_process(argv, _env(port), port) as running:
        yield running


def _exchange(server: ServerProcess, request: bytes) -> bytes:
    """Send ``request`` and read the answer until the server closes the connection."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        # refused and closed while the rest was on its way: the answer is read all the same
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)
        data = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                data += chunk
    return data


def _rejections(server: ServerProcess) -> float:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    line = 'dydc_rejections_total{reason="headers"} '
    return float(next(x for x in text.splitlines() if x.startswith(line)).split()[-1])


def _problem(answer: bytes) -> dict[str, object]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 "), answer[:300]
    assert b"content-type: application/problem+json" in head.lower(), head
    problem: dict[str, object] = orjson.loads(body)
    assert problem["status"] == 431
    # the server's own (a head over its bytes) and the middleware's (too many fields) alike
    assert problem["type"] == "urn:dydc:problem:request-header-fields-too-large", problem
    # an id, as on every answer, and the same id as the problem's instance
    ids = re.findall(rb"\r\nx-request-id: ([0-9a-f]{32})\r\n", head)
    assert len(ids) == 1 and problem["instance"] == f"urn:dydc:request:{ids[0].decode()}", head
    return problem


GET = b"GET /v1/limits HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"


@pytest.mark.slow
@pytest.mark.parametrize(("extra", "needle"), [
    (b"X-Big: " + b"a" * 1_000_000 + b"\r\n", "DYDC_MAX_HEADER_BYTES"),
    (b"".join(b"X-%d: 1\r\n" % i for i in range(10_000)), "DYDC_MAX_HEADER_BYTES"),
    (b"".join(b"X-%d: 1\r\n" % i for i in range(101)), "DYDC_MAX_HEADERS"),
    (b"Host: " + b"h" * 60_000 + b"\r\n", "DYDC_MAX_HEADER_BYTES"),
], ids=["1-MB-header", "10000-headers", "101-headers", "60-KB-host"])
def test_a_header_flood_is_431(server: ServerProcess, extra: bytes, needle: str) -> None:
    before = _rejections(server)
    problem = _problem(_exchange(server, GET + extra + b"\r\n"))
    assert needle in str(problem["detail"])
    assert _rejections(server) == before + 1
    # and the service goes on serving
    assert httpx.get(server.url + "/v1/limits", timeout=10).status_code == 200


@pytest.mark.slow
def test_a_large_body_in_the_heads_packet_is_served(server: ServerProcess) -> None:
    body = orjson.dumps({"inputs": list(range(20_000)), "params": {"C": 2.0}})
    assert len(body) > 5 * 16_384
    request = (b"POST %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
               b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
               % (SENS.encode(), len(body), body))
    answer = _exchange(server, request)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    _, _, rest = answer.partition(b"\r\n\r\n")
    assert orjson.loads(rest)["derivatives"]["C"][-1] == 19_999.0


@pytest.mark.anyio
async def test_the_middleware_answers_in_each_protocols_format(
        make_client: ClientFactory) -> None:
    async with make_client(max_headers=20, max_header_bytes=2048) as c:
        many = {f"x-{i}": "1" for i in range(20)}
        assert_problem(await c.get("/v1/limits", headers=many), 431, "20", "DYDC_MAX_HEADERS")
        assert_error(await c.get("/v2/models/linear", headers=many), 431, "DYDC_MAX_HEADERS")
        long = {"x-long": "a" * 2048}
        assert_problem(await c.get("/v1/limits", headers=long), 431, "DYDC_MAX_HEADER_BYTES")
        assert (await c.get("/v1/limits", headers={"x-ok": "a" * 1000})).status_code == 200
