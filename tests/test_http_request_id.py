"""X-Request-ID (app.http.request_id) and the access log (app.http.access_log)."""

from __future__ import annotations

import json
import os
import re

import httpx
import pytest

from app.http.request_id import accepted_id
from tests.support import ClientFactory, access_log_lines, assert_error, assert_problem, tensor

pytestmark = pytest.mark.anyio

SENS = "/v1/routines/linear/sensitivities"
INFER = "/v2/models/damped_oscillator/infer"
GENERATED = re.compile(r"[0-9a-f]{32}")


async def test_given_id_is_echoed_everywhere(client: httpx.AsyncClient) -> None:
    rid = "req-" + "x" * 124  # 128 visible characters: the longest accepted
    ok = await client.post(SENS, json={"inputs": [1]}, headers={"x-request-id": rid})
    assert ok.status_code == 200 and ok.headers["x-request-id"] == rid
    bad = await client.post(SENS, json={"inputs": ["a"]}, headers={"x-request-id": "abc"})
    assert assert_problem(bad, 422)["instance"] == "urn:dydc:request:abc"
    assert bad.headers["x-request-id"] == "abc"
    refused = await client.post(SENS, content=b"{}", headers={"x-request-id": "t1"})
    assert assert_problem(refused, 415)["instance"] == "urn:dydc:request:t1"
    missing = await client.get("/v1/nope", headers={"x-request-id": "t2"})
    assert assert_problem(missing, 404)["instance"] == "urn:dydc:request:t2"
    for path in ("/healthz", "/metrics", "/v2", "/docs"):
        assert (await client.get(path, headers={"x-request-id": "h"})).headers[
            "x-request-id"] == "h"
    v2 = await client.post(INFER, json={"inputs": []}, headers={"x-request-id": "v2e"})
    assert_error(v2, 400)
    assert v2.headers["x-request-id"] == "v2e"


@pytest.mark.parametrize("given", [None, "", "x" * 129, "has space", "tab\there", "caf\u00e9",
                                   "new\nline"])
async def test_missing_or_invalid_id_is_generated(client: httpx.AsyncClient,
                                                  given: str | None) -> None:
    headers = {} if given is None else {"x-request-id": given.encode("utf-8")}
    r = await client.post(SENS, json={"inputs": ["a"]}, headers=headers)
    rid = r.headers["x-request-id"]
    assert GENERATED.fullmatch(rid), rid
    assert r.json()["instance"] == f"urn:dydc:request:{rid}"


def test_generated_ids_differ() -> None:
    assert len({accepted_id(None) for _ in range(100)}) == 100
    assert accepted_id(b"!~") == "!~"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_worker_generates_its_own_ids() -> None:
    """Server workers forked from one parent (uvicorn --workers) must not repeat each other's
    ids: the generator is reseeded in the child."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, then out without running any cleanup
        os.write(write, "".join(accepted_id(None) for _ in range(3)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as pipe:
        child = pipe.read().decode()
    parent = "".join(accepted_id(None) for _ in range(3))
    assert len(child) == len(parent) == 96
    assert child != parent


async def test_v2_answer_id(client: httpx.AsyncClient) -> None:
    body = {"inputs": [tensor("t", [0.0, 1.0])], "parameters": {"gamma": 0.5, "omega": 2.0}}
    r = await client.post(INFER, json=body, headers={"x-request-id": "from-header"})
    assert r.status_code == 200 and r.json()["id"] == "from-header"
    r = await client.post(INFER, json={**body, "id": "from-body"},
                          headers={"x-request-id": "from-header"})
    assert r.json()["id"] == "from-body" and r.headers["x-request-id"] == "from-header"


async def test_json_log_line(make_client: ClientFactory) -> None:
    t = [0.0, 0.5, 1.0, 2.0]
    body = {"inputs": t, "params": {"gamma": 0.5, "omega": 2.0}, "wrt": ["gamma"]}
    async with make_client(log_format="json") as c:
        with access_log_lines() as lines:
            ok = await c.post("/v1/routines/damped_oscillator/sensitivities?strategy=forward",
                              json=body, headers={"x-request-id": "log-1"})
            bad = await c.post("/v1/routines/nope/evaluate", json=body,
                               headers={"x-request-id": "log-2"})
            infer = await c.post(INFER, json={"inputs": [tensor("t", t)],
                                              "parameters": {"gamma": 0.5, "omega": 2.0}},
                                 headers={"x-request-id": "log-3"})
    assert ok.status_code == 200 and bad.status_code == 404 and infer.status_code == 200
    entries = [json.loads(line) for line in lines]
    assert [e["id"] for e in entries] == ["log-1", "log-2", "log-3"]
    first, second, third = entries
    assert set(first) == {"time", "id", "method", "path", "routine", "strategy", "n", "status",
                          "queue_ms", "compute_ms", "total_ms", "bytes_in", "bytes_out"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])
    assert first | {"time": None, "queue_ms": None, "compute_ms": None, "total_ms": None} == {
        "time": None, "id": "log-1", "method": "POST",
        "path": "/v1/routines/damped_oscillator/sensitivities", "routine": "damped_oscillator",
        "strategy": "forward", "n": 4, "status": 200, "queue_ms": None, "compute_ms": None,
        "total_ms": None, "bytes_in": len(ok.request.content), "bytes_out": len(ok.content)}
    timing = ok.json()["timing_ms"]
    assert first["queue_ms"] == timing["queue"] and first["compute_ms"] == timing["compute"]
    assert first["total_ms"] >= first["queue_ms"] + first["compute_ms"] - 0.002  # rounding
    assert second["status"] == 404 and second["routine"] is None and second["n"] is None
    assert third["routine"] == "damped_oscillator" and third["n"] == 4
    assert third["strategy"] == infer.json()["parameters"]["strategy"]
    assert third["bytes_out"] == len(infer.content)


async def test_compare_and_scenarios_log_what_ran(make_client: ClientFactory) -> None:
    """Both had logged n, queue_ms and compute_ms as null (and scenarios no strategy): compare
    logs its reference's run, scenarios the samples revalued (scenarios x N), its compute and
    the explain's strategy."""
    body = {"inputs": [1.0, 2.0, 3.0], "params": {"C": 2.0}}
    scenarios = {**body, "scenarios": {"list": [{"C": 0.5}, {"C": 1.0}]}, "explain": True}
    async with make_client(log_format="json") as c:
        with access_log_lines() as lines:
            compare = await c.post("/v1/routines/linear/compare", json=body)
            shifted = await c.post("/v1/routines/linear/scenarios", json=scenarios)
    assert compare.status_code == shifted.status_code == 200, (compare.text, shifted.text)
    first, second = (json.loads(line) for line in lines)
    assert first["n"] == 3 and first["strategy"] == compare.json()["reference"]
    assert second["n"] == 6 and second["strategy"] == shifted.json()["strategy"] == "forward"
    assert second["compute_ms"] == shifted.json()["timing_ms"]["compute"]
    for entry in (first, second):
        assert entry["queue_ms"] is not None and entry["compute_ms"] is not None, entry


async def test_text_log_line(client: httpx.AsyncClient) -> None:
    with access_log_lines() as lines:
        await client.post(SENS + "?timeout_ms=31337", json={"inputs": [1, 2]},
                          headers={"x-request-id": "text-1"})
    (line,) = lines
    assert ' text-1 "POST /v1/routines/linear/sensitivities" 200 ' in line
    assert "routine=linear" in line and "n=2" in line and "31337" not in line  # no query


async def test_a_text_log_line_cannot_be_forged_from_the_path_or_the_id(
        client: httpx.AsyncClient) -> None:
    """A path decodes %0a, %1b and %22; written raw, one request wrote a second, forged line
    (or terminal escapes, or ended the quotes early). Each stays in its one line, escaped."""
    forged = '2026-12-06T00:00:00.000Z forged "GET /admin" 200'
    with access_log_lines() as lines:
        r = await client.get("/v1/routines/x%0a" + forged.replace(" ", "%20").replace('"', "%22")
                             + "%1b%5b31m%00%5c", headers={"x-request-id": 'a"b'})
    assert r.status_code == 404
    (line,) = lines
    assert "\n" not in line and "\x1b" not in line and "\x00" not in line
    assert line.count('"') == 2 + forged.count('"') + 1  # the path's quotes and the id's
    assert ' a\\"b "GET /v1/routines/x\\x0a2026-12-06T00:00:00.000Z forged \\"GET /admin\\" ' \
        '200\\x1b[31m\\x00\\\\" 404 ' in line


async def test_a_not_ready_answer_carries_its_instance(
        client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """/readyz's 503 is a problem like every other, with the request's id as instance."""
    from app.engine.runtime.service import Engine

    monkeypatch.setattr(Engine, "readiness", lambda self: "warming up on cpu")
    r = await client.get("/readyz", headers={"X-Request-ID": "ready-probe-1"})
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.json()["detail"] == "warming up on cpu"
    assert r.json()["instance"] == "urn:dydc:request:ready-probe-1"


async def test_lines_kept_for_the_flush_timer_are_written_at_shutdown(
        make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The answers sent at the end of a graceful shutdown come after the event loop's last
    timer: their lines were kept for a flush that never came (and logging's own flush at
    exit does not reach the handler once logging is configured again). The app flushes the
    access log when it shuts down, and at exit."""
    import io

    from app.http import access_log

    handler = access_log.access_logger().handlers[0]
    monkeypatch.setattr(handler, "stream", io.StringIO())
    monkeypatch.setattr(access_log._LazyFlushHandler, "FLUSH_S", 3600.0)  # no timer in time
    async with make_client() as c:
        r = await c.post(SENS, json={"inputs": [1.0]}, headers={"x-request-id": "last-one"})
        assert r.status_code == 200
        assert "last-one" not in handler.stream.getvalue()  # kept for the timer
    assert ' last-one "POST /v1/routines/linear/sensitivities" 200 ' in handler.stream.getvalue()
