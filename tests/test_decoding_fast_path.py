"""The v1 fast path for a flat numeric ``inputs`` array: the same document as the general
path when it applies, and no opinion (None) whenever anything is unusual."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from app.api.decoding import _parse_with_flat_inputs, decode_inputs, parse_json


@pytest.mark.parametrize("body", [
    b'{"inputs": [0, 1, 2.5, -3e-7, 1E+300, -0.0], "params": {"C": -5.0}}',
    b'{"params": {"C": 1}, "wrt": ["C"], "inputs" :\n [ 1 , 2 ] }',
    b'{"inputs": []}',
    orjson.dumps({"inputs": np.random.default_rng(0).standard_normal(10_000)},
                 option=orjson.OPT_SERIALIZE_NUMPY),
])
def test_same_document_as_the_general_path(body: bytes) -> None:
    fast = _parse_with_flat_inputs(body)
    general = parse_json(body)
    assert fast is not None
    assert fast.keys() == general.keys()
    assert {k: v for k, v in fast.items() if k != "inputs"} == {
        k: v for k, v in general.items() if k != "inputs"}
    expected = decode_inputs(general["inputs"])
    got = decode_inputs(fast["inputs"])
    assert got.dtype == np.float64 and got.shape == expected.shape
    assert np.array_equal(got, expected)  # bit for bit


@pytest.mark.parametrize("body", [
    b'{"inputs": [[1, 2], [3, 4]]}',        # rows
    b'{"inputs": [1, true]}',               # not a number
    b'{"inputs": [1, null]}',
    b'{"inputs": [1, "2"]}',
    b'{"inputs": [1, NaN]}',                # non-standard literals
    b'{"inputs": [1, -Infinity]}',
    b'{"inputs": [1,]}',                    # malformed
    b'{"inputs": [1, 2]',
    b'{"inputs": [.5]}',
    b'{"inputs": [1, 2], "inputs": [3]}',   # a duplicate key
    b'{"params": {"inputs": [1]}}',         # not the top-level key
    b'{"params": {"inputs": [1]}, "\\u0069nputs": 0}',
    b'{"wrt": "\\"inputs\\": [1]"}',
    b'{"inputs": [1], "params": {"C": NaN}}',
    b'[{"inputs": [1]}]',
    b'"inputs": [1]',
    b'{"inputs": 1}',
])
def test_anything_unusual_takes_the_general_path(body: bytes) -> None:
    assert _parse_with_flat_inputs(body) is None
