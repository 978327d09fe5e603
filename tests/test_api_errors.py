"""Every error of the v1 contract: a problem+json 4xx that says what to change, never a 500."""

from __future__ import annotations

import gzip

import httpx
import pytest

from tests.support import ClientFactory, assert_problem

pytestmark = pytest.mark.anyio

SENS = "/v1/routines/{}/sensitivities"
JSON = {"content-type": "application/json"}


async def test_unknown_routine_is_404(client: httpx.AsyncClient) -> None:
    for r in [await client.get("/v1/routines/nope"),
              await client.post(SENS.format("nope"), json={"inputs": [1]}),
              await client.post("/v1/routines/nope/evaluate", json={"inputs": [1]})]:
        assert_problem(r, 404, "'nope'", "linear")


@pytest.mark.parametrize(
    ("url", "body", "needles"),
    [
        (SENS.format("linear") + "?strategy=magic", {"inputs": [1]}, ["'magic'", "forward"]),
        (SENS.format("linear"), {"inputs": [1], "params": {"D": 1}}, ["'D'", "C"]),
        (SENS.format("linear"), {"inputs": [1], "wrt": ["D"]}, ["'D'", "C"]),
        (SENS.format("linear"), {"inputs": [1], "wrt": []}, ["wrt is empty"]),
        (SENS.format("logistic_growth"), {"inputs": [[1, 2]], "wrt": ["r", "r"]},
         ["'r' more than once"]),
        (SENS.format("logistic_growth"), {"inputs": [[1, 2]], "wrt": ["t", "r", "t"]},
         ["'t' more than once"]),
        (SENS.format("linear"), {"inputs": [1], "dtype": "float16"}, ["float16", "float64"]),
        (SENS.format("linear"), {"inputs": [[1, 2], [3]]}, ["ragged", "inputs[1]"]),
        (SENS.format("exponential_decay"), {"inputs": [[1, 2], [3]]}, ["ragged", "inputs[1]"]),
        (SENS.format("exponential_decay"), {"inputs": [[1, 2], 3]}, ["inputs[1]"]),
        (SENS.format("linear"), {"inputs": [1, "2"]}, ['inputs[1] is "2"']),
        (SENS.format("linear"), {"inputs": [1, None]}, ["inputs[1] is null"]),
        (SENS.format("linear"), {"inputs": [1, True]}, ["inputs[1] is true"]),
        (SENS.format("linear"), {"inputs": [1, [2]]}, ["inputs[1]"]),
        (SENS.format("exponential_decay"), {"inputs": [[1, 2], [3, "x"]]}, ["inputs[1][1]"]),
        (SENS.format("exponential_decay"), {"inputs": [[1, 2], [3, [4]]]}, ["inputs[1][1]"]),
        (SENS.format("linear"), {"inputs": "1,2"}, ["list"]),
        (SENS.format("linear"), {"inputs": []}, ["empty"]),
        (SENS.format("exponential_decay"), {"inputs": [1, 2]}, ["2 features", "y0, t"]),
        (SENS.format("exponential_decay"), {"inputs": [[1, 2, 3]]}, ["2 features", "have 3"]),
        (SENS.format("black_scholes_call"), {"inputs": [[1, 2]]}, ["3 features", "S, K, T"]),
        (SENS.format("linear"), b'{"inputs": [1, 2, 1e400]}', ["inputs[2]", "not finite"]),
        (SENS.format("exponential_decay"), b'{"inputs": [[1, 2], [3, -1e999]]}',
         ["inputs[1][1]", "not finite"]),
        (SENS.format("linear"), {"inputs": [1, 1e39], "dtype": "float32"},
         ["inputs[1]", "float32"]),
        (SENS.format("linear"), b'{"inputs": [1], "params": {"C": 1e999}}', ["params.C", "finite"]),
        (SENS.format("linear"), {"inputs": [1], "params": {"C": "2"}}, ["params.C"]),
        (SENS.format("linear"), {"inputs": [1], "params": {"C": 10**400}}, ["params.C", "finite"]),
        (SENS.format("linear"), {"inputs": [10**400]}, ["too large", "finite"]),
        (SENS.format("linear"), {"inputs": [1], "params": {"C": 1e39}, "dtype": "float32"},
         ["params.C = 1e+39 is not finite in float32", "dtype float64"]),
        (SENS.format("black_scholes_call"), {"inputs": [[100, 100, 1]] * 2, "dtype": "float32",
                                             "params": {"sigma": [0.2, 4e38]}},
         ["params.sigma[1] = 4e+38 is not finite in float32"]),
        (SENS.format("black_scholes_call"),
         {"inputs": [[100, 100, 1]], "params": {"sigma": -0.1}}, ["params.sigma", "bounds"]),
        (SENS.format("linear"), {"inputs": [1], "wrong": 1}, ["wrong"]),
        (SENS.format("linear"), {"params": {"C": 1}}, ["inputs"]),
        (SENS.format("linear"), [1, 2, 3], ["dict"]),
        (SENS.format("black_scholes_call"), {"inputs": [[100, 100, 1], [100, 100, -1]]},
         ["sample 1", "non-finite"]),  # a negative time to expiry: sqrt(T) is NaN
        # at sigma = 0 too (the spread-free branch had priced it as intrinsic value)
        (SENS.format("black_scholes_call"),
         {"inputs": [[100, 100, 1], [100, 90, -1]], "params": {"sigma": 0.0}},
         ["sample 1", "non-finite"]),
        (SENS.format("logistic_growth"), {"inputs": [[1, 1], [0, 1]]}, ["sample 1"]),
        # bytes that are not UTF-8, named by offset (orjson spoke of surrogates at column 1)
        (SENS.format("linear"), b'{"inputs": [1, 2], "dtype": "float64\xe9"}',
         ["not UTF-8", "byte 0xe9 at offset 36", "encoded as UTF-8"]),
        (SENS.format("linear"), gzip.compress(b'{"inputs": [1]}', mtime=0),
         ["not UTF-8", "Content-Encoding: gzip"]),
    ],
)
async def test_bad_requests_are_422(client: httpx.AsyncClient, url: str, body: object,
                                    needles: list[str]) -> None:
    sent = {"content": body, "headers": JSON} if isinstance(body, bytes) else {"json": body}
    assert_problem(await client.post(url, **sent), 422, *needles)


async def test_nan_literals_name_the_element(client: httpx.AsyncClient) -> None:
    r = await client.post(SENS.format("linear"), content=b'{"inputs": [1, NaN, 3]}',
                          headers=JSON)
    assert_problem(r, 422, "inputs[1]", "not finite")
    r = await client.post(SENS.format("linear"),
                          content=b'{"inputs": [1], "params": {"C": Infinity}}', headers=JSON)
    assert_problem(r, 422, "params.C")


@pytest.mark.parametrize("raw", [b"", b"{", b"not json", b'{"inputs": [1,]}', b"\xff\xfe"])
async def test_malformed_json_is_422(client: httpx.AsyncClient, raw: bytes) -> None:
    assert_problem(await client.post(SENS.format("linear"), content=raw, headers=JSON),
                   422, "JSON")


async def test_strategy_caps(make_client: ClientFactory) -> None:
    async with make_client(reverse_loop_max_n=5, reverse_batched_max_n=6, jacrev_max_n=7) as c:
        for strategy, cap in [("reverse-loop", 5), ("reverse-batched", 6), ("jacrev", 7)]:
            url = SENS.format("linear") + f"?strategy={strategy}"
            ok = await c.post(url, json={"inputs": list(range(cap))})
            assert ok.status_code == 200, ok.text
            body = assert_problem(await c.post(url, json={"inputs": list(range(cap + 1))}), 422,
                                  f"N = {cap}", "strategy=forward", "DYDC_")
            assert body["type"] == "urn:dydc:problem:strategy-cap-exceeded"
        r = await c.post(SENS.format("linear") + "?strategy=forward",
                         json={"inputs": list(range(100))})
        assert r.status_code == 200


async def test_size_limits_are_413(make_client: ClientFactory) -> None:
    async with make_client(max_samples=10, max_body_bytes=2000) as c:
        assert (await c.post(SENS.format("linear"), json={"inputs": list(range(10))})
                ).status_code == 200
        assert_problem(await c.post(SENS.format("linear"), json={"inputs": list(range(11))}),
                       413, "11 samples", "DYDC_MAX_SAMPLES")
        big = {"inputs": [1.0] * 5, "pad": "x" * 3000}
        assert_problem(await c.post(SENS.format("linear"), json=big), 413, "DYDC_MAX_BODY_BYTES")

        async def chunks():  # no Content-Length: the limit must hold while streaming
            yield b'{"inputs": ['
            for _ in range(400):
                yield b"1.0, 2.0, "
            yield b"3.0]}"

        assert_problem(await c.post(SENS.format("linear"), content=chunks(), headers=JSON),
                       413,
                       "DYDC_MAX_BODY_BYTES")


async def test_unknown_path_and_method_are_problems(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/v1/nothing"), 404, "/v1/nothing")
    assert_problem(await client.get(SENS.format("linear")), 405, "GET")


@pytest.mark.parametrize(("asked", "meant"), [
    ("reverse_loop", "reverse-loop"), ("Finite differences", "finite-difference"),
    ("vmap_grad", "vmap-grad"), ("forwrd", "forward"), ("magic", None),
])
async def test_a_misspelt_strategy_names_the_one_meant(client: httpx.AsyncClient, asked: str,
                                                       meant: str | None) -> None:
    r = await client.post(SENS.format("linear"), params={"strategy": asked},
                          json={"inputs": [1]})
    assert_problem(r, 422, f"unknown strategy {asked!r}", "use one of: auto, forward")
    hint = f"(did you mean {meant!r}?)"
    assert (hint in r.json()["detail"]) if meant else "did you mean" not in r.json()["detail"]


async def test_query_validation_is_problem_json(client: httpx.AsyncClient) -> None:
    r = await client.post(SENS.format("linear") + "?strategy=", json={"inputs": [1]})
    assert_problem(r, 422, "strategy")


@pytest.mark.parametrize(("wrt", "needle"), [
    ([f"p{i}" for i in range(10_000)], "'p9' ... and 9990 more"),
    (["C"] * 10_000, "'C' more than once"),
], ids=["10000-unknown-names", "one-name-10000-times"])
async def test_an_error_echoes_at_most_ten_names(client: httpx.AsyncClient, wrt: list[str],
                                                 needle: str) -> None:
    r = await client.post(SENS.format("linear"), json={"inputs": [1], "wrt": wrt})
    assert_problem(r, 422, needle)
    assert len(r.content) < 1000  # not the 89 KB of every name sent
    params = {f"p{i}": 1 for i in range(10_000)}
    r = await client.post(SENS.format("linear"), json={"inputs": [1], "params": params})
    assert_problem(r, 422, "... and 9990 more")
    assert len(r.content) < 1000


LONG = "a" * 200_000


@pytest.mark.parametrize(("path", "body", "closing"), [
    (SENS.format("linear"), {"inputs": [1], "wrt": [LONG]}, "parameters are: C"),
    (SENS.format("linear"), {"inputs": [1], "params": {LONG: 1}}, "parameters are: C"),
    (SENS.format("linear"), {"inputs": [1], "dtype": LONG}, "float64 or float32"),
    ("/v2/models/linear/infer", {"inputs": [
        {"name": LONG, "datatype": "FP64", "shape": [1], "data": [1]}]}, "[N, 1]"),
    ("/v2/models/linear/infer", {"inputs": [
        {"name": "x", "datatype": "FP64", "shape": [1], "data": [1]}],
        "parameters": {"strategy": LONG}}, "finite-difference"),
], ids=["wrt", "param", "dtype", "v2-input", "v2-strategy"])
async def test_an_error_echoes_a_long_name_cut(client: httpx.AsyncClient, path: str,
                                               body: dict[str, object], closing: str) -> None:
    """One name of 200,000 characters had come back whole in the error (a 64 MiB body could
    make an error as large): the detail keeps its beginning and its end, where it says what
    to change."""
    r = await client.post(path, json=body)
    assert r.status_code in (400, 422) and len(r.content) < 3000, len(r.content)
    detail = r.json().get("detail") or r.json()["error"]
    assert "characters left out" in detail and closing in detail, detail


async def test_large_answers_are_checked_exactly_for_non_finite_values(
        client: httpx.AsyncClient) -> None:
    """A large answer's finiteness is tried by its sum first: values whose sum overflows are
    still all finite (200), and one infinity among 70,000 is found and named."""
    n = 70_000
    x = [1.0 + i % 3 for i in range(n)]
    r = await client.post(SENS.format("linear"), json={"inputs": x, "params": {"C": 1e304}})
    assert r.status_code == 200, r.text
    assert r.json()["values"][:3] == [1e304, 2e304, 3e304]
    x[n - 2] = 1e10
    r = await client.post(SENS.format("linear"), json={"inputs": x, "params": {"C": 1e304}})
    assert_problem(r, 422, f"sample {n - 2}", "non-finite value")
