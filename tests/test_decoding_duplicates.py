"""A key given twice in one JSON object is a 422 (v1) or 400 (v2) naming the key
(app.api.decoding.check_unique_keys), on every way a body is parsed; keys counted in the
text settle most bodies, and colons inside strings never make a valid body fail."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from app.api.decoding import check_unique_keys, parse_document
from app.errors import MalformedBody
from tests.support import assert_error, assert_problem, binary_input, frame

pytestmark = pytest.mark.anyio

SENS = "/v1/routines/{}/sensitivities"
INFER = "/v2/models/linear/infer"
JSON = {"content-type": "application/json"}


@pytest.mark.parametrize(("routine", "body", "key"), [
    ("linear", b'{"inputs":[1],"inputs":[2,3],"params":{"C":1,"C":5}}', '"'),  # either key
    ("linear", b'{"inputs":[1,2,3],"params":{"C":1,"C":5}}', '"C"'),  # fast path
    ("linear", b'{"inputs":[1,2,3],"params":{"C":1},"params":{"C":5}}', '"params"'),
    ("logistic_growth", b'{"inputs":[[1,2]],"params":{"r":1, "r" : 2}}', '"r"'),  # rows
    ("linear", b'{"inputs":[1,NaN],"params":{"C":1,"C":5}}', '"C"'),  # the NaN parser
    ("linear", b'{"inputs":[1],"dtype":"float64","dtype":"float32"}', '"dtype"'),
], ids=["inputs-and-params", "flat-inputs", "params", "rows", "nan", "dtype"])
async def test_v1_a_key_twice_is_422_naming_it(client: httpx.AsyncClient, routine: str,
                                               body: bytes, key: str) -> None:
    r = await client.post(SENS.format(routine), content=body, headers=JSON)
    assert_problem(r, 422, "twice in one object", key)


async def test_v2_a_key_twice_is_400_naming_it(client: httpx.AsyncClient) -> None:
    body = (b'{"inputs":[{"name":"x","datatype":"FP64","shape":[2],"data":[1,2],'
            b'"shape":[1]}],"parameters":{"C":2}}')
    assert_error(await client.post(INFER, content=body, headers=JSON), 400, '"shape" twice')
    doc: dict[str, object] = {"inputs": [binary_input("x", np.array([1.0, 2.0]))],
                              "parameters": {"C": 2.0}}
    content, headers = frame(doc, np.array([1.0, 2.0]))
    length = int(headers["Inference-Header-Content-Length"])
    header = content[:length].replace(b'"parameters"', b'"id":"a","id":"b","parameters"')
    headers["Inference-Header-Content-Length"] = str(len(header))
    r = await client.post(INFER, content=header + content[length:], headers=headers)
    assert_error(r, 400, '"id" twice')


async def test_colons_inside_strings_are_no_duplicates(client: httpx.AsyncClient) -> None:
    body = (b'{"id":"urn:a:\\": b : \\"","inputs":[{"name":"x","datatype":"FP64","shape":[2],'
            b'"data":[1,2]}],"parameters":{"C":2}}')
    r = await client.post(INFER, content=body, headers=JSON)
    assert r.status_code == 200, r.text
    assert r.json()["id"] == 'urn:a:": b : "'


@pytest.mark.parametrize("text", [
    b'{"a":1,"b":{"c":[{"d":1},{"d":2}]}}',
    b'{"a" :1, "b" : "x:y", "c":"\\":"}',
    b'{"a\\\\":1}',
    b'{"k":' * 100 + b"1" + b"}" * 100,  # deeper than counted: parsed again
])
def test_documents_without_duplicates_pass(text: bytes) -> None:
    check_unique_keys(text, parse_document(text))


@pytest.mark.parametrize("text", [
    b'{"a":{"b":1,"b":1}}',
    b'{"a" :1, "b" : "x:y", "a":"\\":"}',
    b'{"a\\\\":1,"a\\\\":2}',
    b'{"k":' * 100 + b'{"z":1,"z":2}' + b"}" * 100,
])
def test_documents_with_duplicates_fail(text: bytes) -> None:
    with pytest.raises(MalformedBody, match="twice in one object"):
        parse_document(text)
