"""Bump settings of finite differences (shift, shift_type, scheme), their echo, their bound
rules, and check=finite-difference, through v1."""

from __future__ import annotations

import math

import httpx
import pytest

from tests.support import closed_forms as cf

pytestmark = pytest.mark.anyio

DECAY = "/v1/routines/exponential_decay/sensitivities"
BS = "/v1/routines/black_scholes_call/sensitivities"
ROWS = [[2.0, 0.5], [1.0, 3.0]]
EPS = 2.0**-52


def _want(key: str, k: float = 0.7) -> list[float]:
    return [cf.exponential_decay(y0, t, k)[key] for y0, t in ROWS]


async def _sens(client: httpx.AsyncClient, query: str, body: dict[str, object],
                url: str = DECAY) -> dict[str, object]:
    resp = await client.post(url + query, json=body)
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


async def test_default_bump_is_todays_and_is_echoed(client: httpx.AsyncClient) -> None:
    body = await _sens(client, "?strategy=finite-difference", {"inputs": ROWS,
                                                               "params": {"k": 0.7}})
    assert body["bump"] == {"shift": pytest.approx(EPS ** (1 / 3)), "shift_type": "absolute",
                            "scheme": "central", "schemes": {"k": ["central"]}}
    assert body["derivatives"]["k"] == pytest.approx(_want("k"), rel=1e-9)  # type: ignore[index]
    second = await _sens(client, "?strategy=finite-difference",
                         {"inputs": ROWS, "params": {"k": 0.7}, "order": 2})
    assert second["bump"]["shift"] == pytest.approx(EPS ** (1 / 4))  # type: ignore[index]


@pytest.mark.parametrize(("query", "first_rel"), [
    ("shift=1e-6&shift_type=absolute&scheme=central", 1e-8),
    ("shift=1e-7&shift_type=absolute&scheme=forward", 1e-5),
    ("shift=1e-7&shift_type=relative&scheme=backward", 1e-5),
    ("shift=1e-5&shift_type=relative", 1e-8),
])
async def test_each_setting_runs_and_is_echoed(client: httpx.AsyncClient, query: str,
                                               first_rel: float) -> None:
    body = await _sens(client, "?strategy=finite-difference&" + query,
                       {"inputs": ROWS, "params": {"k": 0.7}})
    settings = dict(part.split("=") for part in query.split("&"))
    scheme = settings.get("scheme", "central")
    assert body["bump"] == {"shift": float(settings["shift"]),
                            "shift_type": settings["shift_type"],
                            "scheme": scheme, "schemes": {"k": [scheme]}}
    got = body["derivatives"]["k"]  # type: ignore[index]
    assert got == pytest.approx(_want("k"), rel=first_rel)


async def test_forward_and_backward_are_one_sided_differences(client: httpx.AsyncClient) -> None:
    """A large shift shows the scheme: forward (f(k+h) - f(k)) / h, backward (f(k) - f(k-h)) / h."""
    h, k = 0.1, 0.7
    for scheme, sign in (("forward", 1), ("backward", -1)):
        body = await _sens(client, f"?strategy=finite-difference&shift={h}&scheme={scheme}",
                           {"inputs": ROWS, "params": {"k": k}})
        for i, (y0, t) in enumerate(ROWS):
            f = [y0 * math.exp(-kk * t) for kk in (k, k + sign * h)]
            assert body["derivatives"]["k"][i] == pytest.approx(  # type: ignore[index]
                sign * (f[1] - f[0]) / h, rel=1e-12)


async def test_relative_shift_at_zero_is_422_saying_absolute(client: httpx.AsyncClient) -> None:
    resp = await client.post(DECAY + "?strategy=finite-difference&shift_type=relative",
                             json={"inputs": ROWS, "params": {"k": 0.0}})
    assert resp.status_code == 422, resp.text
    assert "params.k" in resp.json()["detail"] and "absolute" in resp.json()["detail"]
    resp = await client.post(DECAY + "?strategy=finite-difference&shift_type=relative",
                             json={"inputs": [[0.0, 1.0], [2.0, 1.0]], "params": {"k": 0.5},
                                   "wrt": ["y0"]})
    assert resp.status_code == 422, resp.text
    assert "y0[0]" in resp.json()["detail"] and "absolute" in resp.json()["detail"]


LINEAR = "/v1/routines/linear/sensitivities"


@pytest.mark.parametrize(("query", "params", "dtype"), [
    ("", {"C": 1e160}, "float64"),  # the default bump, h ~ 6e154: h^2 overflows
    ("&shift=1e200", {"C": 2.0}, "float64"),
    ("&shift=1e300", {"C": 2.0}, "float64"),
    ("", {"C": 1e30}, "float32"),  # h ~ 5e27: h^2 overflows float32
])
async def test_a_huge_bump_still_gives_the_derivative(
        client: httpx.AsyncClient, query: str, params: dict[str, float], dtype: str) -> None:
    """dy/dC of C x is x whatever the bump: the weights of the difference quotient are
    divided one factor at a time (their products overflowed, and every weight came to 0)."""
    for order in (1, 2):
        doc = await _sens(client, "?strategy=finite-difference" + query,
                          {"inputs": [1.0, 2.0, 3.0], "params": params, "dtype": dtype,
                           "order": order}, url=LINEAR)
        assert doc["derivatives"]["C"] == pytest.approx([1.0, 2.0, 3.0], rel=1e-6), order
        if order == 2:
            assert doc["second_derivatives"]["C,C"] == pytest.approx([0, 0, 0], abs=1e-6)


@pytest.mark.parametrize(("query", "params", "needles"), [
    ("&shift=1e-20", {"C": 2.0}, ["params.C = 2.0", "h = 1e-20 does not move it",
                                   "larger shift", "float64"]),
    ("&shift=1e-300&scheme=forward", {"C": 1.0}, ["does not move it"]),
    ("", {"C": 1.7976931348623157e308}, ["params.C = 1.7976931348623157e+308", "overflows",
                                          "smaller shift"]),
])
async def test_a_bump_the_value_cannot_hold_is_422_about_the_bump(
        client: httpx.AsyncClient, query: str, params: dict[str, float],
        needles: list[str]) -> None:
    """Not the routine's non-finite answer (a 0 / 0, or an infinity) blamed on the inputs."""
    resp = await client.post(LINEAR + "?strategy=finite-difference" + query,
                             json={"inputs": [1.0, 0.5], "params": params})
    assert resp.status_code == 422, resp.text
    for needle in needles:
        assert needle in resp.json()["detail"], resp.text


async def test_a_bump_across_a_bound(client: httpx.AsyncClient) -> None:
    """sigma >= 0: an explicit scheme that crosses the bound is refused; the default steps
    away from it, as before."""
    body = {"inputs": [[100.0, 100.0, 1.0]], "params": {"sigma": 1e-7}, "wrt": ["sigma"]}
    for query in ("scheme=central", "scheme=backward", "shift=0.01&scheme=central"):
        resp = await client.post(BS + "?strategy=finite-difference&" + query, json=body)
        assert resp.status_code == 422, (query, resp.text)
        detail = resp.json()["detail"]
        assert "params.sigma" in detail and "lower bound" in detail and "scheme" in detail
    for query in ("", "&shift=0.001", "&scheme=forward"):
        resp = await client.post(BS + "?strategy=finite-difference" + query, json=body)
        assert resp.status_code == 200, (query, resp.text)
    per_sample = {"inputs": [[100.0, 100.0, 1.0]] * 3, "params": {"sigma": [0.2, 0.3, 1e-9]},
                  "wrt": ["sigma"]}
    resp = await client.post(BS + "?strategy=finite-difference&scheme=central", json=per_sample)
    assert resp.status_code == 422 and "params.sigma[2]" in resp.json()["detail"]


async def test_default_scheme_at_a_bound_keeps_its_accuracy(client: httpx.AsyncClient) -> None:
    S, T, sigma = 100.0, 1.0, 1e-7
    K = S * math.exp(0.05 * T)  # at the forward, where vega is largest as sigma -> 0
    body = await _sens(client, "?strategy=finite-difference",
                       {"inputs": [[S, K, T]], "params": {"sigma": sigma}, "wrt": ["sigma"]},
                       BS)
    want = cf.black_scholes_greeks(S, K, T, sigma, 0.05)["sigma"]
    assert body["derivatives"]["sigma"][0] == pytest.approx(want, rel=1e-6)  # type: ignore[index]


@pytest.mark.parametrize(("query", "needle"), [
    ("strategy=finite-difference&shift=0", "shift"),
    ("strategy=finite-difference&shift=-1", "shift"),
    ("strategy=finite-difference&shift=abc", "shift"),
    ("strategy=finite-difference&shift_type=percent", "shift_type"),
    ("strategy=finite-difference&scheme=sideways", "scheme"),
    ("strategy=forward&shift=1e-4", "finite-difference"),
    ("check=reverse", "check"),
])
async def test_bad_bump_options_are_422(client: httpx.AsyncClient, query: str,
                                        needle: str) -> None:
    resp = await client.post(DECAY + "?" + query, json={"inputs": ROWS})
    assert resp.status_code == 422, resp.text
    assert needle in resp.json()["detail"]


async def test_check_compares_every_key_with_bumping(client: httpx.AsyncClient) -> None:
    rows = [[49.0, 50.0, 0.3846], [100.0, 95.0, 0.5]]
    body = await _sens(client, "?check=finite-difference", {
        "inputs": rows, "params": {"sigma": [0.2, 0.4]}, "wrt": ["S", "sigma"], "order": 2,
        "cross": True}, BS)
    assert body["strategy"] == "forward"
    check = body["check"]
    keys = ["S", "sigma", "S,S", "S,sigma", "sigma,sigma"]
    assert check["strategy"] == "finite-difference"  # type: ignore[index]
    assert list(check["max_abs_diff"]) == keys and list(check["max_rel_diff"]) == keys  # type: ignore[index]
    for key in keys:  # AD is exact; the differences are the bump's own error
        rel = check["max_rel_diff"][key]  # type: ignore[index]
        assert 0 < rel < (1e-8 if "," not in key else 1e-4), (key, rel)
    assert body["bump"]["scheme"] == "central"  # type: ignore[index]


async def test_check_sees_a_difference(client: httpx.AsyncClient) -> None:
    """A large bump makes the check disagree: it reports the difference, it does not hide it."""
    body = await _sens(client, "?check=finite-difference&shift=0.3&scheme=forward",
                       {"inputs": ROWS, "params": {"k": 0.7}})
    want = _want("k")
    got = body["derivatives"]["k"]  # type: ignore[index]
    assert got == pytest.approx(want, rel=1e-12)
    bumped = [(y0 * math.exp(-1.0 * t) - y0 * math.exp(-0.7 * t)) / 0.3 for y0, t in ROWS]
    diff = max(abs(a - b) for a, b in zip(want, bumped, strict=True))
    assert body["check"]["max_abs_diff"]["k"] == pytest.approx(diff, rel=1e-9)  # type: ignore[index]
    assert body["check"]["max_rel_diff"]["k"] == pytest.approx(  # type: ignore[index]
        diff / max(abs(b) for b in bumped), rel=1e-9)


def _softmax(z: list[float], T: float) -> list[float]:
    e = [math.exp(zj / T) for zj in z]
    return [ej / sum(e) for ej in e]


async def test_the_echo_names_the_scheme_that_ran(client: httpx.AsyncClient) -> None:
    """T >= 0: a central bump of 0.6 at T = 0.5 would cross the bound, so the default steps
    away from it, a one-sided difference of second order, and the echo says forward."""
    z, T, h = [1.0, 2.0, 3.0], 0.5, 0.6
    body = await _sens(client, f"?strategy=finite-difference&shift={h}",
                       {"inputs": [z], "params": {"T": T}},
                       url="/v1/routines/softmax/sensitivities")
    assert body["bump"] == {"shift": h, "shift_type": "absolute", "scheme": "forward",
                            "schemes": {"T": ["forward"]}}
    f0, f1, f2 = (_softmax(z, T + k * h) for k in (0, 1, 2))
    want = [(-3 * a + 4 * b - c) / (2 * h) for a, b, c in zip(f0, f1, f2, strict=True)]
    assert body["derivatives"]["T"][0] == pytest.approx(want, rel=1e-12)  # type: ignore[index]


async def test_the_echo_says_per_entry_which_samples_stepped_away(
        client: httpx.AsyncClient) -> None:
    """Per sample: sigma = 1e-9 steps forward where 0.2 stays central; S has no bound. At
    order 2 the larger default step (eps^(1/4)) steps away where the first one did not."""
    body = await _sens(client, "?strategy=finite-difference", {
        "inputs": [[100.0, 100.0, 1.0]] * 2, "params": {"sigma": [0.2, 1e-9]},
        "wrt": ["S", "sigma"]}, BS)
    assert body["bump"]["scheme"] == "forward"  # type: ignore[index]
    assert body["bump"]["schemes"] == {"S": ["central"],  # type: ignore[index]
                                       "sigma": ["central", "forward"]}
    for query, order, schemes in (("?strategy=finite-difference", 1, ["central"]),
                                  ("?strategy=finite-difference", 2, ["central", "forward"]),
                                  ("?check=finite-difference", 2, ["central", "forward"])):
        body = await _sens(client, query, {"inputs": [[100.0, 100.0, 1.0]],
                                           "params": {"sigma": 1e-5}, "wrt": ["sigma"],
                                           "order": order}, BS)
        assert body["bump"]["schemes"] == {"sigma": schemes}, query  # type: ignore[index]
        assert body["bump"]["scheme"] == schemes[-1], query  # type: ignore[index]


_OVERFLOWS = [
    ("strategy=finite-difference&shift=1e308", "float64", ["h = 1e+308", "span 2h", "float64"]),
    ("check=finite-difference&shift=1e308", "float64", ["h = 1e+308", "span 2h"]),
    ("strategy=finite-difference&shift=2e38", "float32", ["h = 2e+38", "span 2h", "float32"]),
    ("strategy=finite-difference&shift=1e39", "float32", ["h = 1e+39", "bumped value"]),
]


@pytest.mark.parametrize(("query", "dtype", "order", "needles"), [
    *((q, dtype, order, needles) for q, dtype, needles in _OVERFLOWS for order in (1, 2)),
    ("strategy=finite-difference&shift=1e308&scheme=forward", "float64", 2,
     ["h = 1e+308", "bumped value"]),  # v + 2h
])
async def test_a_bump_whose_difference_overflows_is_422_about_the_bump(
        client: httpx.AsyncClient, query: str, dtype: str, order: int,
        needles: list[str]) -> None:
    """v +- h is finite but the span 2h is not: the quotient came out 0 (dy/dC of C x is x)."""
    resp = await client.post(f"{LINEAR}?{query}",
                             json={"inputs": [1.0, 0.5], "dtype": dtype, "order": order})
    assert resp.status_code == 422, resp.text
    detail = resp.json()["detail"]
    for needle in ("params.C = 1.0", "overflows", "smaller shift", *needles):
        assert needle in detail, detail


@pytest.mark.parametrize(("shift", "dtype"), [("8e307", "float64"), ("1e38", "float32")])
async def test_a_bump_just_inside_the_range_still_runs(client: httpx.AsyncClient, shift: str,
                                                       dtype: str) -> None:
    for order in (1, 2):
        doc = await _sens(client, f"?strategy=finite-difference&shift={shift}",
                          {"inputs": [1.0], "dtype": dtype, "order": order}, url=LINEAR)
        assert doc["derivatives"]["C"] == pytest.approx([1.0], rel=1e-6)  # type: ignore[index]


@pytest.mark.parametrize(("body", "nulls"), [
    ({"inputs": [1.0, 2.0, 3.0], "order": 2}, ["C,C"]),  # d2y/dC2 = 0
    ({"inputs": [0.0, 0.0]}, ["C"]),  # dy/dC = x = 0
])
async def test_max_rel_diff_is_null_where_the_bump_is_zero_everywhere(
        client: httpx.AsyncClient, body: dict[str, object], nulls: list[str]) -> None:
    check = (await _sens(client, "?check=finite-difference", body, url=LINEAR))["check"]
    for key, rel in check["max_rel_diff"].items():  # type: ignore[index]
        if key in nulls:
            assert rel is None and check["max_abs_diff"][key] == 0.0, key  # type: ignore[index]
        else:
            assert 0 <= rel < 1e-8, key
