"""where() in the expression language under every strategy: a branch not taken may be
singular there (C / x at x = 0, sqrt of a negative, log of 0), and reverse mode multiplies
its zero gradient by that infinity, so NaN had reached dy/dC (a 422 naming the caller's
domain) where forward mode answered. The interpreter guards each singular operation inside a
branch at the samples the branch does not serve (app.expressions.interpreter)."""

from __future__ import annotations

import math

import httpx
import pytest

pytestmark = pytest.mark.anyio

SENS = "/v1/expressions/sensitivities"
FIRST_ORDER = ["forward", "forward-dual", "vmap-grad", "reverse-batched", "reverse-loop",
               "jacrev", "jacfwd"]

# expression, x, C, dy/dC, d2y/dC2 (closed forms)
CASES = [
    ("where(x != 0, C / x, C)", [0.0, 4.0], 1.0, [1.0, 0.25], [0.0, 0.0]),
    ("where(x > C, sqrt(x - C), 0)", [-1.0, 5.0], 1.0, [0.0, -0.25], [0.0, -1 / 32]),
    ("where(x > 0, log(x) * C, where(x < -1, C ** 0.5 / (x + 1), C))", [2.0, -0.5, -3.0],
     4.0, [math.log(2.0), 1.0, 0.25 / -2.0], [0.0, 0.0, -0.25 * 4.0 ** -1.5 / -2.0]),
    ("where(x < 1, arcsin(x) * C, exp(C * x) / 1e300)", [0.5, 800.0], 1.0,
     [math.asin(0.5), None], [0.0, None]),
]


def _close(got: list[float], want: list[float | None]) -> bool:
    return all(w is None or abs(g - w) <= 1e-12 * max(1.0, abs(w))
               for g, w in zip(got, want, strict=True))


# every first-order strategy at order 1, every second-order one at order 2
RUNS = [(s, 1) for s in FIRST_ORDER] + [(s, 2) for s in ("forward", "vmap-grad", "jacfwd")]


@pytest.mark.parametrize(("strategy", "order"), RUNS)
@pytest.mark.parametrize(("expression", "x", "c", "first", "second"), CASES[:3])
async def test_a_branch_not_taken_leaves_every_strategy_finite(
        client: httpx.AsyncClient, strategy: str, order: int, expression: str, x: list[float],
        c: float, first: list[float], second: list[float]) -> None:
    r = await client.post(f"{SENS}?strategy={strategy}", json={
        "expression": expression, "inputs": {"names": ["x"], "values": x},
        "params": {"C": c}, "wrt": ["C"], "order": order})
    assert r.status_code == 200, r.text
    assert _close(r.json()["derivatives"]["C"], first), r.json()
    if order == 2:
        assert _close(r.json()["second_derivatives"]["C,C"], second), r.json()


async def test_a_branch_taken_that_is_not_finite_is_still_refused(
        client: httpx.AsyncClient) -> None:
    """The guard is for the samples a branch does not serve: where it serves them, an
    overflow is the caller's, named by its sample as before."""
    expression, x, c, first, _ = CASES[3]
    r = await client.post(f"{SENS}?strategy=vmap-grad", json={
        "expression": expression, "inputs": {"names": ["x"], "values": x},
        "params": {"C": c}, "wrt": ["C"]})
    assert r.status_code == 422 and "sample 1" in r.json()["detail"], r.text
    r = await client.post(f"{SENS}?strategy=vmap-grad", json={
        "expression": expression, "inputs": {"names": ["x"], "values": x[:1]},
        "params": {"C": c}, "wrt": ["C"]})
    assert r.status_code == 200 and _close(r.json()["derivatives"]["C"], first[:1]), r.text
