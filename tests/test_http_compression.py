"""gzip request bodies (a bomb is a 413; app.http.compression) and compressed answers
(zstd or gzip, by size and type; app.http.response_compression)."""

from __future__ import annotations

import gzip
import threading
import zlib

import httpx
import numpy as np
import orjson
import pytest
from starlette.types import Message, Receive, Scope, Send

from app.context import STATE_KEY, RequestRecord
from app.http.compression import GzipRequestMiddleware
from app.http.response_compression import negotiate
from tests.support import (
    ClientFactory,
    assert_error,
    assert_problem,
    binary_input,
    frame,
    tensor,
    unframe,
)

pytestmark = pytest.mark.anyio

SENS = "/v1/routines/linear/sensitivities"
INFER = "/v2/models/linear/infer"
GZIP_JSON = {"content-type": "application/json", "content-encoding": "gzip"}


def _x(n: int) -> list[float]:
    return [float(v) for v in np.linspace(-3.0, 7.0, n)]


async def test_gzip_request_body_v1_and_v2(client: httpx.AsyncClient) -> None:
    x = _x(500)
    v1 = await client.post(SENS, content=gzip.compress(orjson.dumps(
        {"inputs": x, "params": {"C": -2.0}})), headers=GZIP_JSON)
    assert v1.status_code == 200, v1.text
    assert v1.json()["derivatives"]["C"] == x  # dy/dC = x, exactly
    assert v1.json()["values"] == [-2.0 * v for v in x]
    v2 = await client.post(INFER, content=gzip.compress(orjson.dumps(
        {"inputs": [tensor("x", x)], "parameters": {"C": 4.0}})), headers=GZIP_JSON)
    assert v2.status_code == 200, v2.text
    outputs = {o["name"]: o["data"] for o in v2.json()["outputs"]}
    assert outputs["dy_dC"] == x and outputs["y"] == [4.0 * v for v in x]


async def test_gzip_streamed_in_chunks(client: httpx.AsyncClient) -> None:
    packed = gzip.compress(orjson.dumps({"inputs": _x(3000)}))

    async def chunks():  # no Content-Length, many small pieces
        for i in range(0, len(packed), 100):
            yield packed[i:i + 100]

    r = await client.post(SENS, content=chunks(), headers=GZIP_JSON)
    assert r.status_code == 200, r.text
    assert r.json()["derivatives"]["C"] == _x(3000)


async def test_gzip_bomb_is_413(make_client: ClientFactory) -> None:
    limit = 100_000
    # 50 MB of zeros inflate from about 50 kB: under the limit on the wire, over it inflated
    bomb = zlib.compressobj(9, zlib.DEFLATED, 31)
    packed = bomb.compress(b'{"inputs": [' + b"0," * 25_000_000) + bomb.compress(b"0]}")
    packed += bomb.flush()
    assert len(packed) < limit
    async with make_client(max_body_bytes=limit) as c:
        body = assert_problem(await c.post(SENS, content=packed, headers=GZIP_JSON), 413,
                              "DYDC_MAX_BODY_BYTES", "inflated")
        assert body["type"] == "urn:dydc:problem:body-too-large"
        assert_error(await c.post(INFER, content=packed, headers=GZIP_JSON), 413,
                     "DYDC_MAX_BODY_BYTES")
        # just under the limit inflated: accepted
        doc = orjson.dumps({"inputs": [1.0] * 10, "pad": None})
        ok = await c.post(SENS, content=gzip.compress(doc), headers=GZIP_JSON)
        assert_problem(ok, 422, "pad")  # parsed: an unknown field, not a size problem


async def test_bad_gzip_and_other_encodings(client: httpx.AsyncClient) -> None:
    body = orjson.dumps({"inputs": [1.0]})
    assert_problem(await client.post(SENS, content=body, headers=GZIP_JSON), 422, "gzip")
    truncated = gzip.compress(body)[:-12]
    assert_problem(await client.post(SENS, content=truncated, headers=GZIP_JSON), 422, "gzip")
    assert_error(await client.post(INFER, content=body, headers=GZIP_JSON), 400, "gzip")
    for encoding in ("br", "gzip, br", "deflate, gzip"):
        r = await client.post(SENS, content=body, headers={
            "content-type": "application/json", "content-encoding": encoding})
        assert_problem(r, 415, encoding)
    # deflate is the zlib format (RFC 9110 8.4.1.2), one stream
    deflate = {"content-type": "application/json", "content-encoding": "deflate"}
    r = await client.post(SENS, content=zlib.compress(body), headers=deflate)
    assert r.status_code == 200 and r.json()["derivatives"] == {"C": [1.0]}, r.text
    assert_problem(await client.post(SENS, content=zlib.compress(body)[:-3], headers=deflate),
                   422, "not valid deflate", "ends early")
    twice = await client.post(SENS, content=zlib.compress(body) * 2, headers=deflate)
    assert_problem(twice, 400, "after its deflate data")
    assert twice.json()["type"] == "urn:dydc:problem:deflate-trailing-data"  # (it said gzip)
    identity = await client.post(SENS, content=body, headers={
        "content-type": "application/json", "content-encoding": "identity"})
    assert identity.status_code == 200
    # empty list elements do not count (RFC 9110 5.6.1; "gzip," was a 415)
    for encoding in ("gzip,", ", gzip", " ,gzip, "):
        r = await client.post(SENS, content=gzip.compress(body), headers={
            "content-type": "application/json", "content-encoding": encoding})
        assert r.status_code == 200 and r.json()["derivatives"] == {"C": [1.0]}, r.text
    for encoding in ("", " , "):
        r = await client.post(SENS, content=body, headers={
            "content-type": "application/json", "content-encoding": encoding})
        assert r.status_code == 200, (encoding, r.text)


async def test_a_compressed_chunk_that_inflates_large_inflates_off_the_event_loop(
        client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """8 KB of gzip that inflate to 8 MB: inflated in a thread, where other clients'
    requests are not held (the threshold was 256 KiB of compressed bytes, which inflate to
    256 MiB), and the request answered as usual."""
    from app.http import compression

    on_the_loop: list[bool] = []
    feed = compression._Inflater.feed

    def watched(self: object, chunk: bytes) -> None:
        if chunk:  # (the last message may carry none)
            on_the_loop.append(threading.current_thread() is threading.main_thread())
        feed(self, chunk)  # type: ignore[arg-type]

    monkeypatch.setattr(compression._Inflater, "feed", watched)
    body = gzip.compress(orjson.dumps({"inputs": [0.0] * 2_000_000, "params": {"C": 1.0}}))
    assert 4096 < len(body) < 16_384
    r = await client.post(SENS, content=body, headers=GZIP_JSON)
    assert r.status_code in (200, 413, 422), r.text  # (the samples' own limits)
    assert on_the_loop == [False]
    small = gzip.compress(orjson.dumps({"inputs": [1.0], "params": {"C": 1.0}}))
    assert (await client.post(SENS, content=small, headers=GZIP_JSON)).status_code == 200
    assert on_the_loop == [False, True]  # (a small one inflates where it is)


async def test_large_responses_are_gzipped_when_accepted(make_client: ClientFactory) -> None:
    x = _x(20_000)
    async with make_client(gzip_min_bytes=10_000) as c:
        small = await c.post(SENS, json={"inputs": x[:10]},
                             headers={"accept-encoding": "gzip"})
        assert "content-encoding" not in small.headers
        big = await c.post(SENS, json={"inputs": x}, headers={"accept-encoding": "gzip"})
        assert big.headers["content-encoding"] == "gzip"
        assert int(big.headers["content-length"]) < len(big.content) / 2  # on the wire
        assert big.json()["derivatives"]["C"] == x  # httpx inflates it
        plain = await c.post(SENS, json={"inputs": x}, headers={"accept-encoding": "identity"})
        assert "content-encoding" not in plain.headers
        assert plain.json()["derivatives"]["C"] == x
        infer = await c.post(INFER, json={"inputs": [tensor("x", x)]},
                             headers={"accept-encoding": "gzip"})
        assert infer.headers["content-encoding"] == "gzip"
        assert {o["name"]: o["data"] for o in infer.json()["outputs"]}["dy_dC"] == x


async def test_answers_decode_to_the_same_numbers_whatever_the_coding(
        make_client: ClientFactory) -> None:
    """zstd where offered, gzip where only gzip is, identity where neither: the same
    numbers (httpx decodes zstd with zstandard installed, a dependency of the service)."""
    x = _x(20_000)
    async with make_client(gzip_min_bytes=10_000) as c:
        answers = {}
        for accept, coding in [("zstd", "zstd"), ("gzip, deflate", "gzip"),
                               ("gzip, deflate, br, zstd", "zstd"), ("br", None),
                               ("identity", None), ("zstd;q=0, gzip", "gzip"),
                               ("*", "zstd"), ("gzip;q=0, *;q=0", None)]:
            r = await c.post(SENS, json={"inputs": x, "params": {"C": 3.0}},
                             headers={"accept-encoding": accept})
            assert r.status_code == 200, r.text
            assert r.headers.get("content-encoding") == coding, accept
            if coding is not None:
                assert int(r.headers["content-length"]) < len(r.content) / 2  # on the wire
            # compressed or not, it would have been for another Accept-Encoding: say so
            assert r.headers["vary"] == "Accept-Encoding", accept
            answers[accept] = r.json()
        for doc in answers.values():
            assert doc["derivatives"]["C"] == x and doc["values"] == [3.0 * v for v in x]


async def test_answers_outside_the_bounds_or_binary_are_sent_as_they_are(
        make_client: ClientFactory) -> None:
    x = _x(20_000)  # about 0.8 MB of JSON
    async with make_client(gzip_min_bytes=10_000, compress_max_bytes=100_000) as c:
        large = await c.post(SENS, json={"inputs": x}, headers={"accept-encoding": "gzip"})
        assert "content-encoding" not in large.headers  # over DYDC_COMPRESS_MAX_BYTES
        assert large.json()["derivatives"]["C"] == x
        body, headers = frame({"inputs": [binary_input("x", np.asarray(x[:5000]))],
                               "parameters": {"binary_data_output": True}},
                              np.asarray(x[:5000]))
        binary = await c.post(INFER, content=body,
                              headers={**headers, "accept-encoding": "gzip, zstd"})
        assert binary.status_code == 200, binary.text
        assert binary.headers["content-type"] == "application/octet-stream"
        assert "content-encoding" not in binary.headers  # float bits do not shrink
        assert unframe(binary)[1]["dy_dC"].tolist() == x[:5000]
    async with make_client(gzip_min_bytes=0) as c:  # 0: compression off
        off = await c.post(SENS, json={"inputs": x}, headers={"accept-encoding": "gzip"})
        assert "content-encoding" not in off.headers


async def test_header_lines_of_one_name_are_one_list(make_client: ClientFactory) -> None:
    """RFC 9110 5.3: two Accept-Encoding lines are the list of both, as are two
    Content-Encoding lines."""
    x = _x(20_000)
    async with make_client(gzip_min_bytes=10_000) as c:
        for lines, coding in [([("accept-encoding", "*"), ("accept-encoding", "zstd;q=0")],
                               "gzip"),
                              ([("accept-encoding", "gzip"), ("accept-encoding", "zstd")],
                               "zstd")]:
            r = await c.post(SENS, json={"inputs": x}, headers=lines)
            assert r.status_code == 200, r.text
            assert r.headers.get("content-encoding") == coding, lines
            assert r.json()["derivatives"]["C"] == x
        small = await c.post(SENS, json={"inputs": x[:10]})
        assert "vary" not in small.headers  # under the minimum: no client would get it coded
        twice = gzip.compress(gzip.compress(orjson.dumps({"inputs": [1.0]})))
        r = await c.post(SENS, content=twice, headers=[
            ("content-type", "application/json"), ("content-encoding", "gzip"),
            ("content-encoding", "gzip")])
        assert_problem(r, 415, "gzip, gzip")


async def test_an_encoding_header_without_a_body_is_no_body(client: httpx.AsyncClient) -> None:
    for path in ("/healthz", "/readyz", "/v1/routines"):
        for coding in ("gzip", "br", "zstd, gzip"):  # supported or not: nothing to decode
            r = await client.get(path, headers={"content-encoding": coding})
            assert r.status_code == 200, (path, coding, r.text)
    r = await client.post(SENS, content=b"", headers=GZIP_JSON)
    assert r.status_code == 422 and "gzip" not in r.json()["detail"], r.text


async def test_a_client_gone_during_a_gzip_body_is_logged_as_499_not_500() -> None:
    record = RequestRecord(id="r")
    messages = iter([{"type": "http.request", "body": gzip.compress(b"{}")[:5],
                      "more_body": True}, {"type": "http.disconnect"}])
    reached = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        reached.append(scope)

    async def receive() -> Message:
        return next(messages)

    async def send(message: Message) -> None:
        raise AssertionError(f"nothing is sent to a client that went away: {message}")

    scope = {"type": "http", "method": "POST", "path": SENS,
             "headers": [(b"content-encoding", b"gzip")], "state": {STATE_KEY: record}}
    await GzipRequestMiddleware(app, limit=1_000)(scope, receive, send)
    assert reached == [] and record.closed_with == 499


@pytest.mark.parametrize(("accept", "zstd", "coding"), [
    (None, True, None), (b"", True, None), (b"gzip", True, "gzip"), (b"x-gzip", True, "gzip"),
    (b"GZIP;Q=0.5, zstd;q=0.4", True, "gzip"), (b"gzip, zstd", False, "gzip"),
    (b"zstd", False, None), (b"*;q=0.1", False, "gzip"), (b"gzip;q=bad", True, None),
    (b"deflate, br", True, None),
    # identity named with a higher q-value than every coding: no coding (RFC 9110 12.5.3)
    (b"identity, gzip;q=0.1", True, None), (b"identity;q=1, *;q=0.1", True, None),
    (b"identity;q=0.5, gzip", True, "gzip"), (b"gzip, identity", True, "gzip"),
    (b"identity;q=0, gzip;q=0.2", True, "gzip"),
])
def test_negotiation(accept: bytes | None, zstd: bool, coding: str | None) -> None:
    assert negotiate(accept, zstd=zstd) == coding


def test_zstd_answers_compress_side_by_side_in_threads() -> None:
    """Answers over 256 KiB compress in worker threads, several at once: each gets a
    compressor of its own (one ZstdCompressor shared between threads crashed the process)."""
    from concurrent.futures import ThreadPoolExecutor

    import zstandard

    from app.http.response_compression import _compressor

    compress = _compressor("zstd", 1, 1)
    bodies = [orjson.dumps(np.linspace(i, i + 1, 60_000), option=orjson.OPT_SERIALIZE_NUMPY)
              for i in range(16)]
    with ThreadPoolExecutor(8) as pool:
        for _ in range(5):
            packed = list(pool.map(compress, bodies))
            assert [zstandard.ZstdDecompressor().decompress(p) for p in packed] == bodies


async def test_concurrent_large_zstd_answers(make_client: ClientFactory) -> None:
    import anyio

    x = _x(12_000)  # about 0.5 MB of JSON: compressed in a worker thread
    async with make_client(gzip_min_bytes=10_000) as c:
        answers: dict[int, httpx.Response] = {}

        async def one(i: int) -> None:
            answers[i] = await c.post(SENS, json={"inputs": x, "params": {"C": float(i)}},
                                      headers={"accept-encoding": "zstd"})

        async with anyio.create_task_group() as tg:
            for i in range(12):
                tg.start_soon(one, i)
        for i, r in answers.items():
            assert r.status_code == 200 and r.headers["content-encoding"] == "zstd"
            assert r.json()["values"] == [i * v for v in x]
