"""Bounded connections on a real server (app.server): slow requests are cut at the read
timeout, connections past the limit are refused, and honest clients are served meanwhile.
The guard is installed by the application's lifespan, so both ways of starting it are
checked: ``uvicorn app.main:app`` here, ``python -m app`` for the limit."""

from __future__ import annotations

import os
import re
import socket
import sys
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest

from tests.support import ServerProcess, free_port, server_process

pytestmark = pytest.mark.slow

READ_TIMEOUT_S = 1.0


def _env(port: int, **extra: str) -> dict[str, str]:
    return {**os.environ, "DYDC_DEVICE": "cpu", "DYDC_HOST": "127.0.0.1", "DYDC_PORT": str(port),
            "DYDC_WARMUP": "false", "DYDC_LOG_LEVEL": "warning",
            "DYDC_READ_TIMEOUT_S": str(READ_TIMEOUT_S), **extra}


@pytest.fixture(scope="module")
def uvicorn_server() -> Iterator[ServerProcess]:
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "warning"]
    with server_process(argv, _env(port, DYDC_MAX_JOB_COST="1000"), port) as running:
        yield running


def _connect(server: ServerProcess) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def _read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (socket.timeout, and so
    a test failure, if it never does within 10 s)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _closed_total(server: ServerProcess, reason: str) -> float:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    line = f'dydc_connections_closed_total{{reason="{reason}"}} '
    return float(next(x for x in text.splitlines() if x.startswith(line)).split()[-1])


def _refused_total(server: ServerProcess, status: int) -> float:
    """dydc_requests_total of the POSTs refused before their routine was known."""
    text = httpx.get(server.url + "/metrics", timeout=10).text
    line = f'dydc_requests_total{{routine="unknown",status="{status}",strategy="none"}} '
    return sum(float(x.split()[-1]) for x in text.splitlines() if x.startswith(line))


def _logged(server: ServerProcess, needle: str) -> str:
    """The access log's line that holds ``needle`` (within 10 s)."""
    deadline = time.monotonic() + 10
    while needle not in server.output():
        assert time.monotonic() < deadline, server.output()[-2000:]
        time.sleep(0.05)
    return next(x for x in server.output().splitlines() if needle in x)


def test_unfinished_headers_get_408_and_are_closed(uvicorn_server: ServerProcess) -> None:
    """Never seen by the application, the request is logged and counted all the same, and
    on a v2 path answered in v2's format."""
    before = _closed_total(uvicorn_server, "read_timeout")
    refused = _refused_total(uvicorn_server, 408)
    with _connect(uvicorn_server) as sock:
        sock.sendall(b"POST /v1/routines/logistic_growth/evaluate?x=1 HTTP/1.1\r\nHost: x\r\n")
        answer = _read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-type: application/problem+json" in head
    assert "DYDC_READ_TIMEOUT_S" in orjson.loads(body)["detail"]
    assert _closed_total(uvicorn_server, "read_timeout") == before + 1
    line = _logged(uvicorn_server, '"POST /v1/routines/logistic_growth/evaluate" ')
    assert '" 408 ' in line and f" out={len(body)}" in line, line
    assert _refused_total(uvicorn_server, 408) == refused + 1
    with _connect(uvicorn_server) as sock:
        sock.sendall(b"POST /v2/models/logistic_growth/infer HTTP/1.1\r\nHost: x\r\n")
        answer = _read_until_closed(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408") and b"content-type: application/json" in head
    assert "DYDC_READ_TIMEOUT_S" in orjson.loads(body)["error"]
    assert '" 408 ' in _logged(uvicorn_server, '"POST /v2/models/logistic_growth/infer" ')


@pytest.mark.parametrize(("path", "key"), [("/v1/routines/softmax/evaluate", "detail"),
                                           ("/v2/models/softmax/infer", "error")])
def test_a_head_over_the_limit_is_logged_and_counted(uvicorn_server: ServerProcess,
                                                     path: str, key: str) -> None:
    """The server's 431, written before the application sees the request, is in the access
    log and dydc_requests_total as the middlewares' refusals are, in the path's format."""
    refused = _refused_total(uvicorn_server, 431)
    with _connect(uvicorn_server) as sock:
        sock.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n"
                     % (path.encode(), b"a" * 20_000))
        answer = _read_until_closed(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431"), answer[:200]
    assert "DYDC_MAX_HEADER_BYTES" in orjson.loads(body)[key]
    rid = re.search(rb"\r\nx-request-id: (\w+)\r\n", head)
    assert rid is not None, head
    line = _logged(uvicorn_server, f'"POST {path}" ')
    assert line.split()[1] == rid[1].decode() and '" 431 ' in line, line
    assert f" in=0 out={len(body)}" in line, line
    assert _refused_total(uvicorn_server, 431) == refused + 1


def test_a_trickled_body_is_cut(uvicorn_server: ServerProcess) -> None:
    with _connect(uvicorn_server) as sock:
        sock.sendall(b"POST /v1/routines/linear/sensitivities HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                     b'{"inputs": [')
        answer = _read_until_closed(sock)
    # the application was reading the body: the connection closes under it
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer


def test_a_request_cut_at_the_read_timeout_is_logged_and_counted_as_408(
        uvicorn_server: ServerProcess) -> None:
    """The access log and dydc_requests_total say what the client got (they said 500 with
    out=0, and 499, and then 408 with out=0); the client's id is escaped in the answer's JSON
    (written raw, an id with a quote made it invalid and added fields to it)."""
    path = "/v1/routines/exponential_decay/sensitivities"  # a routine no other test here uses
    rid = 'cut-1"},"status":200,"x":{"a":"\\'
    with _connect(uvicorn_server) as sock:
        sock.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nX-Request-ID: %s\r\n"
                     % (path.encode(), rid.encode())
                     + b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                     b'{"inputs": [')
        answer = _read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"\r\nx-request-id: %s\r\n" % rid.encode() in head  # the request's own id
    problem = orjson.loads(body)
    assert problem["instance"] == f"urn:dydc:request:{rid}" and problem["status"] == 408
    deadline = time.monotonic() + 10
    while f'"POST {path}" ' not in uvicorn_server.output():
        assert time.monotonic() < deadline, uvicorn_server.output()
        time.sleep(0.05)
    line = next(x for x in uvicorn_server.output().splitlines() if f'"POST {path}" ' in x)
    assert f'"POST {path}" 408 ' in line and f" out={len(body)} " in line, line
    metrics = httpx.get(uvicorn_server.url + "/metrics", timeout=10).text
    assert ('dydc_requests_total{routine="exponential_decay",status="408",strategy="auto"} 1.0'
            in metrics), [x for x in metrics.splitlines() if "exponential_decay" in x]


def test_a_kept_alive_connection_is_timed_per_request(uvicorn_server: ServerProcess) -> None:
    body = b'{"inputs": [1, 2], "params": {"C": 3}}'
    request = (b"POST /v1/routines/linear/sensitivities HTTP/1.1\r\nHost: x\r\n"
               b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
               % (len(body), body))
    with _connect(uvicorn_server) as sock:
        sock.sendall(request)
        first = b""
        while b"\r\n\r\n" not in first:
            first += sock.recv(65536)
        head, _, rest = first.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), first
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        while len(rest) < length:
            rest += sock.recv(65536)
        sock.sendall(b"POST /v1/routines/linear/sensitivities HTTP/1.1\r\n")  # and no more
        answer = _read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer


def test_a_long_computation_is_not_cut(uvicorn_server: ServerProcess) -> None:
    """A complete request is never timed out, however long its work: reverse-loop over
    logistic_rk4 takes seconds here, well past the 1 s read timeout."""
    t = [0.05 * i for i in range(60)]
    r = httpx.post(uvicorn_server.url + "/v1/routines/logistic_rk4/sensitivities"
                   "?strategy=reverse-loop", timeout=120,
                   json={"inputs": [[10.0, ti] for ti in t], "params": {"r": 0.3, "K": 50.0},
                         "wrt": ["r"]})
    assert r.status_code == 200, r.text
    assert r.json()["timing_ms"]["compute"] > READ_TIMEOUT_S * 1e3


def test_connections_past_the_limit_are_refused_and_honest_clients_served() -> None:
    port = free_port()
    env = _env(port, DYDC_MAX_CONNECTIONS="8", DYDC_READ_TIMEOUT_S="3")
    with server_process([sys.executable, "-m", "app"], env, port) as server:
        held = [_connect(server) for _ in range(8)]
        try:
            for sock in held:
                sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # never finished
            with _connect(server) as extra:
                answer = _read_until_closed(extra)
            assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), answer
            assert b"retry-after: 1" in answer.lower()
            assert b"DYDC_MAX_CONNECTIONS" in answer
            assert re.search(rb"\r\nx-request-id: [0-9a-f]{32}\r\n", answer), answer
            for sock in held:  # the slow ones are cut at the read timeout ...
                assert _read_until_closed(sock).startswith(b"HTTP/1.1 408")
        finally:
            for sock in held:
                sock.close()
        # ... and then an honest client is served
        r = httpx.post(server.url + "/v1/routines/linear/sensitivities", timeout=30,
                       json={"inputs": [0, 1, 2], "params": {"C": -5}})
        assert r.status_code == 200
        assert r.json()["derivatives"] == {"C": [0.0, 1.0, 2.0]}
