"""The v1 fast path for a flat numeric ``inputs`` array: the same document as the general
path when it applies, and no opinion (None) whenever anything is unusual."""

from __future__ import annotations

import json
import random

import numpy as np
import orjson
import pytest
import torch

from app.api.decoding import (
    SampleCounter,
    _parse_with_numeric_inputs,
    decode_inputs,
    parse_document,
    parse_json,
)
from app.engine.compiled.builds import columns
from app.engine.differentiation.problem import Problem
from app.engine.runtime.validation import checked_inputs
from routines.elementary import exponential_decay


@pytest.mark.parametrize("body", [
    b'{"inputs": [0, 1, 2.5, -3e-7, 1E+300, -0.0], "params": {"C": -5.0}}',
    b'{"params": {"C": 1}, "wrt": ["C"], "inputs" :\n [ 1 , 2 ] }',
    b'{"inputs": []}',
    orjson.dumps({"inputs": np.random.default_rng(0).standard_normal(10_000)},
                 option=orjson.OPT_SERIALIZE_NUMPY),
    b'{"inputs": [[1, 2], [3, 4.5e-300]], "params": {"k": [1, 2]}}',  # rows
    b'{"inputs":[[1]], "wrt": ["k"]}',
    b'{"inputs" : [ [1, 2, 3] , [-4, 5, 6]\n]\t, "params": {"x": [[7]]}}',
    orjson.dumps({"inputs": np.random.default_rng(1).standard_normal((10_000, 3)),
                  "params": {"sigma": 0.2}}, option=orjson.OPT_SERIALIZE_NUMPY),
])
def test_same_document_as_the_general_path(body: bytes) -> None:
    fast = _parse_with_numeric_inputs(body)
    general = parse_json(body)
    assert fast is not None
    assert fast.keys() == general.keys()
    assert {k: v for k, v in fast.items() if k != "inputs"} == {
        k: v for k, v in general.items() if k != "inputs"}
    expected = decode_inputs(general["inputs"])
    got = decode_inputs(fast["inputs"])
    assert got.dtype == np.float64 and got.shape == expected.shape
    assert np.array_equal(got, expected)  # bit for bit
    assert got.flags.f_contiguous == expected.flags.f_contiguous  # rows as columns, both


@pytest.mark.parametrize("body", [
    b'{"inputs": [[1, 2], [3]]}',           # ragged rows
    b'{"inputs": [[1, 2], 3]}',
    b'{"inputs": [1, [2]]}',
    b'{"inputs": [[], []]}',
    b'{"inputs": [[[1, 2]], [[3, 4]]]}',    # deeper
    b'{"inputs": [[1, [2]], [3, [4]]]}',
    b'{"inputs": [[1, 2], [3, "4"]]}',      # a row with something else
    b'{"inputs": [[1, 2], [3, false]]}',
    b'{"inputs": [[1, NaN], [3, 4]]}',
    b'{"inputs": [[1, 2], [3, 4]}',         # malformed
    b'{"inputs": [[1, 2],, [3, 4]]}',
    b'{"inputs": [[1, 2], [3, 4]]]}',
    b'{"inputs": [[1, 2], [3, 4]], "inputs": [[5, 6]]}',
    b'{"inputs": [[1e400, 2]]}',
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
    assert _parse_with_numeric_inputs(body) is None


def _chunked(body: bytes, rng: random.Random) -> SampleCounter:
    counter = SampleCounter()
    cuts = sorted(rng.sample(range(len(body) + 1), min(len(body) + 1, rng.randint(0, 6))))
    for start, end in zip([0, *cuts], [*cuts, len(body)], strict=True):
        counter.feed(body[start:end])
    return counter


def test_samples_are_counted_exactly_in_any_chunking() -> None:
    """The count of ``inputs`` in the raw bytes, fed in random chunks (every split of a
    keyword, a separator or the closing brackets across chunks): the number of samples, for
    flat lists and rows, in any key order and spacing JSON writers use."""
    rng = random.Random(7)
    for _ in range(3000):
        n = rng.choice([0, 1, 2, rng.randint(3, 60)])
        d = rng.randint(1, 3)
        rows = rng.random() < 0.5
        inputs = [[rng.uniform(-1e3, 1e3) for _ in range(d)] if rows else rng.random() * 10
                  for _ in range(n)]
        doc = {"params": {"C": 1.5, "ab": [1, 2]}, "inputs": inputs, "wrt": ["C"]}
        if rng.random() < 0.5:
            doc = {"inputs": inputs, **doc}
        # pretty-printed too (a line break between a row's "]" and the list's: counted on,
        # the brackets of wrt and params made a body of N samples over the limit)
        body = json.dumps(doc, separators=rng.choice([(",", ":"), (", ", ": ")]),
                          indent=rng.choice([None, None, 2, "\t"])).encode()
        counter = _chunked(body, rng)
        assert counter.result() == n, body
        assert counter.at_least == n


@pytest.mark.parametrize(("body", "expected"), [
    (b'{"params": {}}', None),                      # no inputs
    (b'{"inputs": 5}', None),                       # not an array
    (b'{"name": "inputs", "inputs": [1]}', None),   # the first "inputs" is not the key
    (b'{"inputs": [[1], [2]', None),                # no end
    (b'{"inputs": [ ]}', 0),
    (b'{"inputs": [1,2,3]}', 3),
    (b'{"inputs": [[1,2],[3,4],[5,6]]}', 3),
])
def test_bodies_the_count_has_no_opinion_on(body: bytes, expected: int | None) -> None:
    for seed in range(20):
        assert _chunked(body, random.Random(seed)).result() == expected


def test_the_count_gives_up_on_a_long_head() -> None:
    counter = SampleCounter()
    counter.feed(b'{"params": {"x": "' + b"a" * SampleCounter.HEAD_LIMIT)
    counter.feed(b'"}, "inputs": [1, 2]}')
    assert counter.gave_up and counter.result() is None


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rows_are_columns_in_memory_down_to_a_compiled_graphs_arguments(
        dtype: torch.dtype) -> None:
    """Rows decoded from JSON are laid out feature by feature, the engine keeps that layout
    (float32 too), and a compiled graph's (D, N) argument is then a view of the request's
    inputs, not a copy of every one of them (app.engine.compiled.builds.columns)."""
    rows = [[1.0 + i, 0.5 * i] for i in range(5)]
    decoded = decode_inputs(rows)
    assert np.array_equal(decoded, np.array(rows)) and decoded.flags.f_contiguous
    kept = checked_inputs(exponential_decay, decoded, dtype, 100)
    assert kept.dtype == dtype and kept.t().is_contiguous()
    assert torch.equal(kept, torch.tensor(rows, dtype=dtype))
    problem = Problem(exponential_decay, kept, {"k": torch.tensor(0.3, dtype=dtype)}, ("k",))
    cols, _ = columns(problem, slice(None))
    assert cols.data_ptr() == kept.data_ptr() and torch.equal(cols, kept.t())
    part, _ = columns(problem, slice(1, 4))  # a chunk's columns are gathered: still right
    assert torch.equal(part, kept[1:4].t()) and part.is_contiguous()


def test_a_small_body_takes_the_general_path_and_a_large_one_the_fast_path() -> None:
    """Below 1 KiB the fast path's scans cost more than the type scan they spare: the
    document then keeps ``inputs`` as parsed (a list), which decode_inputs turns into the same
    array."""
    small = orjson.dumps({"inputs": [[1.5, 2.0], [3.0, 4.0]], "params": {"k": 0.3}})
    large = orjson.dumps({"inputs": [[1.5 + i, 2.0] for i in range(100)], "params": {"k": 0.3}})
    assert len(small) < 1024 <= len(large)
    assert isinstance(parse_document(small)["inputs"], list)
    assert isinstance(parse_document(large)["inputs"], np.ndarray)
    for body in (small, large):
        got = decode_inputs(parse_document(body)["inputs"])
        assert np.array_equal(got, np.array(orjson.loads(body)["inputs"]))
        assert got.flags.f_contiguous
