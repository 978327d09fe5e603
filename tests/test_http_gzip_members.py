"""gzip request bodies made of several members, or followed by other bytes
(app.http.compression): every member is inflated, other trailing bytes are a 400."""

from __future__ import annotations

import gzip

import httpx
import orjson
import pytest

from app.http.compression import _Inflater, _Trailing
from tests.support import assert_error, assert_problem, tensor

pytestmark = pytest.mark.anyio

SENS = "/v1/routines/linear/sensitivities"
INFER = "/v2/models/linear/infer"
GZIP_JSON = {"content-type": "application/json", "content-encoding": "gzip"}
BODY = orjson.dumps({"inputs": [1.0, 2.0, 3.5], "params": {"C": -2.0}})


async def test_concatenated_members_are_inflated_whole(client: httpx.AsyncClient) -> None:
    half = len(BODY) // 2
    two = gzip.compress(BODY[:half]) + gzip.compress(BODY[half:])
    r = await client.post(SENS, content=two, headers=GZIP_JSON)
    assert r.status_code == 200, r.text
    assert r.json()["derivatives"]["C"] == [1.0, 2.0, 3.5]


@pytest.mark.parametrize("trailing", [b"\x00", b"garbage", b"\x1f"],
                         ids=["nul", "text", "half-magic"])
async def test_bytes_after_the_gzip_data_are_400(client: httpx.AsyncClient,
                                                 trailing: bytes) -> None:
    r = await client.post(SENS, content=gzip.compress(BODY) + trailing, headers=GZIP_JSON)
    assert_problem(r, 400, f"{len(trailing)} bytes after its gzip data")
    v2 = orjson.dumps({"inputs": [tensor("x", [1.0])], "parameters": {"C": 4.0}})
    r = await client.post(INFER, content=gzip.compress(v2) + trailing, headers=GZIP_JSON)
    assert_error(r, 400, "after its gzip data")


def test_members_split_anywhere_across_chunks() -> None:
    stream = gzip.compress(b"abc" * 100) + gzip.compress(b"") + gzip.compress(b"xyz")
    for cut in range(1, len(stream)):
        inflater = _Inflater(10_000)
        inflater.feed(stream[:cut])
        inflater.feed(stream[cut:])
        assert inflater.finish() == b"abc" * 100 + b"xyz", cut
    inflater = _Inflater(10_000)
    inflater.feed(stream + b"\x1f")
    with pytest.raises(_Trailing):
        inflater.finish()
