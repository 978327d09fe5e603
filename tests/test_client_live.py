"""dydc.Client and dydc.AsyncClient against a live service (a uvicorn process started by the
tests): every method sync and async, numpy in and out, closed forms in float64, JSON and
binary giving identical numbers, and large batches split under the service's limits."""

from __future__ import annotations

import math
from collections.abc import Iterator

import dydc
import numpy as np
import pytest

from tests.support import SMALL_LIMITS, black_scholes, options

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

PROTOCOLS = ["json", "binary"]
@pytest.fixture
def client(dydc_url: str, request: pytest.FixtureRequest) -> Iterator[dydc.Client]:
    with dydc.Client(dydc_url, protocol=getattr(request, "param", "auto")) as c:
        yield c


# -- the catalogue -----------------------------------------------------------------------------

def test_catalogue(client: dydc.Client) -> None:
    names = [r.name for r in client.routines()]
    assert {"linear", "black_scholes_call", "exponential_decay", "softmax"} <= set(names)
    info = client.routine("black_scholes_call")
    assert info.param_names == ["sigma", "r"] and info.inputs == ["S", "K", "T"]
    assert info.params[0].bounds == (0.0, None)
    by_name = {s.name: s for s in client.strategies()}
    assert by_name["reverse-loop"].cap == 1000 and by_name["forward"].cap is None
    # the fields the README documents, not left in .extra
    assert by_name["forward"].order2 is True and by_name["forward-dual"].order2 is False
    assert by_name["jacrev"].per_sample_params is False and by_name["forward"].enabled
    assert not {"enabled", "order2", "per_sample_params"} & set(by_name["forward"].extra)
    limits = client.limits()
    assert limits.max_samples == 2_000_000 and limits.max_body_bytes == 64 * 2**20
    assert limits.strategy_caps == {"reverse-loop": 1000, "reverse-batched": 4096,
                                    "jacrev": 4096}


async def test_catalogue_async(dydc_url: str) -> None:
    async with dydc.AsyncClient(dydc_url) as client:
        assert "linear" in [r.name for r in await client.routines()]
        assert (await client.routine("exponential_decay")).inputs == ["y0", "t"]
        assert "jacfwd" in [s.name for s in await client.strategies()]
        assert (await client.limits()).max_batch_samples == 262_144


# -- closed forms ------------------------------------------------------------------------------

@pytest.mark.parametrize("client", PROTOCOLS, indirect=True)
def test_linear_forum_example(client: dydc.Client) -> None:
    x = np.arange(10, dtype=np.float64)
    result = client.sensitivities("linear", x, {"C": -5.0}, wrt=["C"])
    np.testing.assert_array_equal(result.values, -5.0 * x)
    np.testing.assert_array_equal(result.derivatives["C"], x)
    assert result.derivatives.keys() == {"C"} and result.second_derivatives == {}
    assert result.values.shape == (10,) and result.n == 10
    assert result.strategy == "forward" and result.dtype == "float64"
    assert result.device == "cpu" and result.protocol == client._steps.protocol


@pytest.mark.parametrize("client", PROTOCOLS, indirect=True)
def test_exponential_decay_by_column(client: dydc.Client) -> None:
    y0 = np.array([1.0, 2.0, 0.5, 3.0])
    t = np.array([0.0, 0.5, 1.0, 4.0])
    k = 0.7
    result = client.sensitivities("exponential_decay", {"t": t, "y0": y0}, {"k": k})
    y = y0 * np.exp(-k * t)
    np.testing.assert_allclose(result.values, y, rtol=1e-14)
    np.testing.assert_allclose(result.derivatives["k"], -t * y0 * np.exp(-k * t), rtol=1e-14)


@pytest.mark.parametrize("client", PROTOCOLS, indirect=True)
def test_black_scholes_vega_rho(client: dydc.Client) -> None:
    x = options(50)
    result = client.sensitivities("black_scholes_call", x, {"sigma": 0.25, "r": 0.03})
    expected = black_scholes(x[:, 0], x[:, 1], x[:, 2], 0.25, 0.03)
    np.testing.assert_allclose(result.values, expected["price"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(result.derivatives["sigma"], expected["sigma"], rtol=1e-9)
    np.testing.assert_allclose(result.derivatives["r"], expected["r"], rtol=1e-9)


def test_hull_example_as_lists(client: dydc.Client) -> None:
    result = client.sensitivities("black_scholes_call", [[49, 50, 0.3846]],
                                  {"sigma": 0.2, "r": 0.05})
    assert result.derivatives["sigma"][0] == pytest.approx(12.1, abs=0.05)
    assert result.derivatives["r"][0] == pytest.approx(8.91, abs=0.01)


@pytest.mark.parametrize("client", PROTOCOLS, indirect=True)
def test_several_outputs(client: dydc.Client) -> None:
    z = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    result = client.sensitivities("softmax", z, {"T": 0.5})
    e = np.exp(z / 0.5)
    p = e / e.sum(axis=1, keepdims=True)
    assert result.values.shape == (2, 3) and result.derivatives["T"].shape == (2, 3)
    assert result.outputs == client.routine("softmax").outputs
    np.testing.assert_allclose(result.values, p, rtol=1e-14)
    # d softmax(z/T)_i / dT = -(1/T^2) p_i (z_i - sum_j p_j z_j)
    dT = -(p * (z - (p * z).sum(axis=1, keepdims=True))) / 0.5**2
    np.testing.assert_allclose(result.derivatives["T"], dT, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("client", PROTOCOLS, indirect=True)
def test_evaluate(client: dydc.Client) -> None:
    result = client.evaluate("linear", [1, 2, 3], {"C": 2})
    np.testing.assert_array_equal(result.values, [2.0, 4.0, 6.0])
    assert result.strategy is None and result.derivatives == {}


# -- protocols ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_json_and_binary_identical(dydc_url: str, dtype: str) -> None:
    x = options(300, seed=7)
    answers = []
    for protocol in PROTOCOLS:
        with dydc.Client(dydc_url, protocol=protocol) as client:
            answers.append(client.sensitivities("black_scholes_call", x, {"sigma": 0.3},
                                                dtype=dtype))
    as_json, as_binary = answers
    assert (as_json.protocol, as_binary.protocol) == ("json", "binary")
    assert as_json.values.dtype == as_binary.values.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(as_json.values, as_binary.values)
    assert as_json.derivatives.keys() == as_binary.derivatives.keys() == {"sigma", "r"}
    for key in as_json.derivatives:
        np.testing.assert_array_equal(as_json.derivatives[key], as_binary.derivatives[key])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_params_are_the_same_on_both_protocols(dydc_url: str, dtype: str) -> None:
    """v2's answer does not echo the parameters: the binary path gives what v1's does, the
    routine's defaults filled in and a per-sample parameter as a list."""
    x = options(3, seed=2)
    answers = []
    for protocol in PROTOCOLS:
        with dydc.Client(dydc_url, protocol=protocol) as client:
            answers.append((
                client.sensitivities("black_scholes_call", x,
                                     {"r": 0.05, "sigma": [0.2, 0.25, 0.3]}, dtype=dtype),
                client.evaluate("damped_oscillator", [1.0, 2.0], {"omega": 2}, dtype=dtype)))
    (book, oscillator), (book_binary, oscillator_binary) = answers
    assert book_binary.protocol == "binary"
    assert book.params == book_binary.params == {"sigma": [0.2, 0.25, 0.3], "r": 0.05}
    assert oscillator.params == oscillator_binary.params == {"gamma": 0.1, "omega": 2.0}


def test_auto_picks_by_size(dydc_url: str) -> None:
    with dydc.Client(dydc_url, binary_min_samples=100) as client:
        small = client.sensitivities("linear", np.arange(99.0), {"C": 1.0})
        large = client.sensitivities("linear", np.arange(100.0), {"C": 1.0})
    assert (small.protocol, large.protocol) == ("json", "binary")
    np.testing.assert_array_equal(large.derivatives["C"], np.arange(100.0))


# -- async -------------------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_async_methods(dydc_url: str, protocol: str) -> None:
    import asyncio

    x = options(40, seed=3)
    async with dydc.AsyncClient(dydc_url, protocol=protocol) as client:
        values, many = await asyncio.gather(
            client.evaluate("black_scholes_call", x, {"sigma": 0.2, "r": 0.05}),
            asyncio.gather(*(client.sensitivities("linear", np.arange(5.0) + i, {"C": i})
                             for i in range(8))))
    expected = black_scholes(x[:, 0], x[:, 1], x[:, 2], 0.2, 0.05)
    np.testing.assert_allclose(values.values, expected["price"], rtol=1e-9)
    for i, result in enumerate(many):  # each answer its own
        np.testing.assert_array_equal(result.values, i * (np.arange(5.0) + i))
        np.testing.assert_array_equal(result.derivatives["C"], np.arange(5.0) + i)


# -- errors from the live service --------------------------------------------------------------

@pytest.mark.parametrize("client", PROTOCOLS, indirect=True)
def test_errors(client: dydc.Client) -> None:
    with pytest.raises(dydc.NotFound, match=r"registered routines: .*linear") as missing:
        client.sensitivities("nope", [1.0])
    assert missing.value.status == 404 and missing.value.title == "Not Found"
    with pytest.raises(dydc.InvalidRequest, match="unknown strategy 'bogus'") as bad:
        client.sensitivities("linear", [1.0], strategy="bogus")
    assert bad.value.status in (400, 422)
    with pytest.raises(dydc.InvalidRequest, match="sigma"):
        client.sensitivities("black_scholes_call", [[1, 1, 1]], {"sigma": -1.0})
    with pytest.raises(dydc.InvalidRequest, match=r"empty|0 samples"):  # the service's to say
        client.sensitivities("linear", np.zeros(0))


def test_local_input_errors(client: dydc.Client) -> None:
    with pytest.raises(ValueError, match=r"inputs\[1\] is nan"):
        client.sensitivities("linear", [1.0, float("nan")])
    with pytest.raises(ValueError, match="the routine takes y0, t"):
        client.sensitivities("exponential_decay", {"y0": [1.0], "x": [1.0]})
    with pytest.raises(ValueError, match=r"params\['C'\] has shape \(2,\); send a number or 3"):
        client.sensitivities("linear", [1.0, 2.0, 3.0], {"C": [1.0, 2.0]})
    with pytest.raises(ValueError, match="must be numbers"):
        client.sensitivities("linear", ["a", "b"])


# -- chunks ------------------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_chunks_under_low_limits(small_dydc_url: str, protocol: str) -> None:
    x = options(1000, seed=11)
    with dydc.Client(small_dydc_url, protocol=protocol, max_concurrency=3) as client:
        limits = client.limits()
        assert limits.max_samples == int(SMALL_LIMITS["DYDC_MAX_SAMPLES"])
        assert limits.max_body_bytes == int(SMALL_LIMITS["DYDC_MAX_BODY_BYTES"])
        result = client.sensitivities("black_scholes_call", x, {"sigma": 0.2, "r": 0.05})
    assert result.chunks >= 10 and result.n == 1000 and result.values.shape == (1000,)
    expected = black_scholes(x[:, 0], x[:, 1], x[:, 2], 0.2, 0.05)
    np.testing.assert_allclose(result.values, expected["price"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(result.derivatives["sigma"], expected["sigma"], rtol=1e-9)
    np.testing.assert_allclose(result.derivatives["r"], expected["r"], rtol=1e-9)


async def test_chunks_async_and_strategy_cap(small_dydc_url: str) -> None:
    x = np.arange(250, dtype=np.float64)
    async with dydc.AsyncClient(small_dydc_url, protocol="json") as client:
        result = await client.sensitivities("linear", x, {"C": 3.0}, strategy="reverse-loop")
        many = await client.evaluate("softmax", np.tile([1.0, 2.0, 3.0], (333, 1)), {"T": 1.0})
    assert result.strategy == "reverse-loop" and result.chunks == math.ceil(250 / 30)
    np.testing.assert_array_equal(result.values, 3.0 * x)
    np.testing.assert_array_equal(result.derivatives["C"], x)
    assert many.values.shape == (333, 3) and many.chunks > 1
    np.testing.assert_allclose(many.values.sum(axis=1), 1.0, rtol=1e-14)


def test_over_the_limit_without_chunks(small_dydc_url: str) -> None:
    """The service's 413 reaches the caller as TooLarge where the client sends it whole."""
    import httpx

    body = {"inputs": list(range(101)), "params": {"C": 1.0}}
    response = httpx.post(f"{small_dydc_url}/v1/routines/linear/sensitivities", json=body)
    error = dydc.errors.error_from_response(response)
    assert isinstance(error, dydc.TooLarge) and error.status == 413
    assert "DYDC_MAX_SAMPLES" in error.detail or "100" in error.detail


def test_json_without_orjson(dydc_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The standard library's json (no ``fast`` extra) sends and reads the same numbers."""
    x = options(64, seed=9)
    with dydc.Client(dydc_url, protocol="json") as client:
        fast = client.sensitivities("black_scholes_call", x, {"sigma": 0.3})
        monkeypatch.setattr(dydc.v1, "orjson", None)
        plain = client.sensitivities("black_scholes_call", x, {"sigma": 0.3})
    np.testing.assert_array_equal(fast.values, plain.values)
    for key in ("sigma", "r"):
        np.testing.assert_array_equal(fast.derivatives[key], plain.derivatives[key])


def test_a_null_relative_difference_is_nan(client: dydc.Client) -> None:
    """d2y/dC2 of linear is 0 everywhere: the service says null for its relative difference
    (nothing to divide by); the client reads NaN (it raised TypeError), merged chunks and the
    comparison alike, and the bump's echo keeps the schemes that ran."""
    result = client.sensitivities("linear", [1.0, 2.0, 3.0], order=2, check=True)
    assert result.check is not None
    assert math.isnan(result.check.max_rel_diff["C,C"])
    assert result.check.max_abs_diff["C,C"] < 1e-6
    assert result.check.max_rel_diff["C"] < 1e-8
    assert result.bump is not None and result.bump.schemes == {"C": ["central"]}
    comparison = client.compare("linear", [1.0, 2.0, 3.0], order=2)
    ok = [row for row in comparison.strategies if row.status == "ok"]
    assert ok and all(math.isnan(row.max_rel_diff["C,C"]) for row in ok)
