"""How the service protects itself, each attack at small scale, asserted by statuses and the
order of events (never by wall-clock times): cost-aware admission, disabled strategies,
running work stopped on disconnect and at its deadline, light requests served between the
slices of a heavy one, bodies counted before they are parsed, the bound on bodies in flight,
and the grace period's end."""

from __future__ import annotations

import asyncio
import gzip
import json
import math
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import orjson
import pytest
import torch
from asgi_lifespan import LifespanManager
from starlette.types import Message

import app.api.v1 as v1_module
from app.config import Settings
from app.engine import Engine
from app.engine.runtime.admission import CostModel, RoutineCost
from app.main import create_app
from routines import discover
from tests.support import ClientFactory, scrape, value

pytestmark = pytest.mark.anyio

SENS = "/v1/routines/{}/sensitivities"
INFER = "/v2/models/{}/infer"
# 60 logistic_rk4 samples by reverse-loop: 60 backward passes through 200 RK4 steps, about
# a second or more here, in slices of about DYDC_SLICE_MS
T = [0.1 * i for i in range(60)]
HEAVY = {"inputs": [[10.0, t] for t in T], "params": {"r": 0.3, "K": 50.0}, "wrt": ["r"]}


def logistic(t: float, r: float = 0.3, K: float = 50.0, n0: float = 10.0) -> tuple[float, float]:
    a, e = (K - n0) / n0, math.exp(-r * t)
    return K / (1 + a * e), K * a * t * e / (1 + a * e) ** 2


class Conversation:
    """One request straight through the ASGI interface, its body and its client's departure
    under the test's control."""

    def __init__(self, application: Any, path: str, body: bytes, *,
                 declared: bool = True) -> None:
        self._incoming: asyncio.Queue[Message] = asyncio.Queue()
        self.sent: list[Message] = []
        path, _, query = path.partition("?")
        headers = [(b"content-type", b"application/json")]
        if declared:
            headers.append((b"content-length", b"%d" % len(body)))
        self.scope = {"type": "http", "method": "POST", "path": path, "root_path": "",
                      "query_string": query.encode(), "headers": headers,
                      "http_version": "1.1", "scheme": "http", "server": ("t", 80),
                      "client": ("127.0.0.1", 1)}
        self.task = asyncio.ensure_future(application(self.scope, self._receive, self._send))

    async def _receive(self) -> Message:
        return await self._incoming.get()

    async def _send(self, message: Message) -> None:
        self.sent.append(message)

    def body(self, chunk: bytes, more: bool = False) -> None:
        self._incoming.put_nowait({"type": "http.request", "body": chunk, "more_body": more})

    def disconnect(self) -> None:
        self._incoming.put_nowait({"type": "http.disconnect"})

    @property
    def waiting(self) -> bool:
        """Every message sent so far has been received."""
        return self._incoming.empty()

    async def answer(self) -> tuple[int, Any]:
        with anyio.fail_after(120):
            await self.task
        return self.sent[0]["status"], orjson.loads(self.sent[1]["body"])


class Served:
    def __init__(self, application: Any, client: httpx.AsyncClient) -> None:
        self.app = application
        self.client = client

    @property
    def engine(self) -> Engine:
        engine: Engine = self.app.state.engine
        return engine

    async def metrics(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        return scrape((await self.client.get("/metrics")).text)

    async def until_heavy_runs(self) -> None:
        with anyio.fail_after(60):
            while self.engine.worker.workers[0].heavy_job is None:
                await anyio.sleep(0.005)


async def _served(**settings: Any) -> AsyncIterator[Served]:
    application = create_app(Settings(**{"device": "cpu", **settings}))
    async with LifespanManager(application, startup_timeout=60, shutdown_timeout=60):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://t",
                                     timeout=120) as client:
            with anyio.fail_after(60):
                while (await client.get("/readyz")).status_code != 200:
                    await anyio.sleep(0.02)
            yield Served(application, client)


@pytest.fixture(scope="module")
async def served() -> AsyncIterator[Served]:
    """Small slices, and a cost limit far away: these tests are about stopping work."""
    async for s in _served(slice_ms=10, max_job_cost=1000):
        yield s


# -- admission ----------------------------------------------------------------------------


def test_the_cost_model_prices_strategies_by_their_complexity() -> None:
    rk4 = discover()["logistic_rk4"]
    model = CostModel(max_job_cost_s=10)
    model._routines[rk4.name] = RoutineCost(pass_s=0.02, sample_s=1e-6)
    forward = model.estimate(rk4, "forward", 4096, 1)
    batched = model.estimate(rk4, "reverse-batched", 4096, 1)
    loop = model.estimate(rk4, "reverse-loop", 1000, 1)
    assert forward == pytest.approx(2 * 0.02 + 4 * 4096 * 1e-6)
    # O(N^2): 16 sample-evaluations per sample per output row, plus one pass per 100 rows
    assert batched == pytest.approx((1 + 0.01 * 4096) * 0.02 + (4096 + 16 * 4096**2) * 1e-6)
    assert loop == pytest.approx((1 + 1000) * 0.02 + (1000 + 4 * 1000**2) * 1e-6)
    # what a job took corrects later estimates halfway, in log space
    model.learn(rk4, "reverse-batched", 4096, 1, seconds=4 * batched)
    assert model.estimate(rk4, "reverse-batched", 4096, 1) == pytest.approx(2 * batched)
    assert model.estimate(rk4, "forward", 4096, 1) == pytest.approx(forward)


def test_second_order_pairs_are_priced_by_what_nested_ad_pays() -> None:
    """A pair d2y/da db costs ten first-order passes in nested forward mode, half a whole
    first-order job in reverse over reverse (vmap-grad), measured on logistic_rk4; and what
    an order-2 job took is learnt as order 2, not as its first-order part."""
    rk4 = discover()["logistic_rk4"]
    model = CostModel(max_job_cost_s=10)
    model._routines[rk4.name] = RoutineCost(pass_s=0.02, sample_s=1e-6)
    n = 2000
    one = model.estimate(rk4, "forward", n, 1)
    assert model.estimate(rk4, "forward", n, 4, pairs=10) == pytest.approx(
        model.estimate(rk4, "forward", n, 4) + 10 * 10 * one)
    reverse = model.estimate(rk4, "vmap-grad", n, 4)
    assert model.estimate(rk4, "vmap-grad", n, 4, pairs=10) == pytest.approx(6 * reverse)
    model.learn(rk4, "forward", n, 4, seconds=4 * model.estimate(rk4, "forward", n, 4, 10),
                pairs=10)
    assert model.estimate(rk4, "forward", n, 4, pairs=10) == pytest.approx(
        2 * (model.estimate(rk4, "forward", n, 4) / 2 + 10 * 10 * one))


async def test_a_cost_refusal_gives_only_advice_that_helps(make_client: ClientFactory) -> None:
    """Plain evaluation is not told to use a strategy (finite differences, advised, got the
    same refusal), one sample is not told to split the batch, and a stress grid is told in
    its own terms: scenarios and samples, not the N of the launch they make."""
    bs = discover()["black_scholes_call"]
    model = CostModel(1.0)
    book, grid = 10, 500
    limit = math.sqrt(model.estimate(bs, None, book, 1) * model.estimate(bs, None, book * grid, 1))
    async with make_client(max_job_cost=1e-6, warmup=False) as c:
        body = {"inputs": [[10.0, 0.01 * i] for i in range(4096)], "params": {"r": 0.3}}
        r = await c.post("/v1/routines/logistic_rk4/evaluate", json=body)
        assert r.status_code == 422, r.text
        detail = r.json()["detail"]
        assert "evaluation of routine logistic_rk4 at N = 4096" in detail, detail
        assert detail.endswith("split the batch") and "strategy=" not in detail, detail
        one = await c.post(SENS.format("logistic_rk4"), json={"inputs": [[10.0, 1.0]]})
        assert one.status_code == 422, one.text
        assert "one sample costs that much" in one.json()["detail"], one.text
        assert "split the batch" not in one.json()["detail"], one.text
    async with make_client(max_job_cost=limit, warmup=False) as c:
        r = await c.post("/v1/routines/black_scholes_call/scenarios", json={
            "inputs": [[100.0, 90.0 + i, 1.0] for i in range(book)],
            "params": {"sigma": 0.2, "r": 0.05}, "scenarios": {"shifts": {"sigma": {
                "type": "absolute", "values": [0.0001 * k for k in range(grid)]}}}})
        assert r.status_code == 422, r.text
        assert r.json()["type"] == "urn:dydc:problem:cost-exceeded"
        detail = r.json()["detail"]
        assert detail.startswith(f"revaluing {grid} scenarios x {book} samples ({grid * book} "
                                 "evaluations of routine black_scholes_call)"), detail
        assert detail.endswith("send fewer scenarios or samples per request"), detail


async def test_a_job_over_the_cost_limit_is_refused_with_a_cheaper_strategy(
        make_client: ClientFactory) -> None:
    async with make_client(max_job_cost=5) as c:
        body = {"inputs": [[10.0, 0.01 * i] for i in range(4096)], "params": {"r": 0.3}}
        r = await c.post(SENS.format("logistic_rk4") + "?strategy=reverse-batched", json=body)
        assert r.status_code == 422, r.text
        problem = r.json()
        assert problem["type"] == "urn:dydc:problem:cost-exceeded"
        detail = problem["detail"]
        assert "strategy reverse-batched of routine logistic_rk4 at N = 4096" in detail
        assert "over the limit of 5 s (DYDC_MAX_JOB_COST)" in detail
        assert "use strategy=" in detail
        cheaper = detail.split("use strategy=")[1].split(" ")[0]
        assert cheaper not in ("reverse-batched", "reverse-loop", "jacrev")
        ok = await c.post(SENS.format("logistic_rk4") + f"?strategy={cheaper}", json=body)
        assert ok.status_code == 200, ok.text
        v2 = await c.post(INFER.format("logistic_rk4"), json={
            "inputs": [{"name": "x", "datatype": "FP64", "shape": [4096, 2],
                        "data": body["inputs"]}],
            "parameters": {"strategy": "reverse-batched"}})
        assert v2.status_code == 400 and "DYDC_MAX_JOB_COST" in v2.json()["error"]
        metrics = scrape((await c.get("/metrics")).text)
        assert value(metrics, "dydc_rejections_total", reason="cost") >= 2


async def test_a_disabled_strategy_is_refused(make_client: ClientFactory) -> None:
    async with make_client(strategies="auto,forward,vmap-grad,reverse-batched",
                           reverse_batched_max_n=10) as c:
        before = scrape((await c.get("/metrics")).text)
        r = await c.post(SENS.format("linear") + "?strategy=reverse-loop", json={"inputs": [1]})
        assert r.status_code == 422
        assert r.json()["type"] == "urn:dydc:problem:strategy-disabled"
        assert "turned off on this server (DYDC_STRATEGIES)" in r.json()["detail"]
        assert "use one of: auto, forward, reverse-batched, vmap-grad" in r.json()["detail"]
        v2 = await c.post(INFER.format("linear"), json={
            "inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1]}],
            "parameters": {"strategy": "jacrev"}})
        assert v2.status_code == 400 and "DYDC_STRATEGIES" in v2.json()["error"]
        listed = {s["name"]: s["enabled"]
                  for s in (await c.get("/v1/strategies")).json()["strategies"]}
        assert listed["reverse-loop"] is False and listed["jacrev"] is False
        assert listed["forward"] is True and listed["auto"] is True
        ok = await c.post(SENS.format("linear") + "?strategy=vmap-grad", json={"inputs": [2]})
        assert ok.json()["derivatives"] == {"C": [2.0]}
        # the check runs finite differences, turned off here too (it had run them)
        r = await c.post(SENS.format("linear") + "?check=finite-difference", json={"inputs": [1]})
        assert r.status_code == 422 and r.json()["type"] == "urn:dydc:problem:strategy-disabled"
        assert "check=finite-difference" in r.json()["detail"]
        capped = await c.post(SENS.format("linear") + "?strategy=reverse-batched",
                              json={"inputs": [1.0] * 11})
        assert capped.json()["type"] == "urn:dydc:problem:strategy-cap-exceeded", capped.text
        assert "Use strategy=forward" in capped.json()["detail"]  # forward is served here
        # both refusals counted as every protection's (they were not)
        after = scrape((await c.get("/metrics")).text)
        for reason, refused in (("strategy_disabled", 3), ("strategy_cap", 1)):
            assert value(after, "dydc_rejections_total", reason=reason) == value(
                before, "dydc_rejections_total", reason=reason) + refused, reason


async def test_a_cap_refusal_advises_only_what_the_server_serves(
        make_client: ClientFactory) -> None:
    """It had advised strategy=forward on a server that turns forward mode off."""
    async with make_client(strategies="auto,vmap-grad,reverse-batched",
                           reverse_batched_max_n=10) as c:
        capped = await c.post(SENS.format("linear") + "?strategy=reverse-batched",
                              json={"inputs": [1.0] * 11})
        assert capped.json()["type"] == "urn:dydc:problem:strategy-cap-exceeded", capped.text
        assert "forward" not in capped.json()["detail"] and "Split the batch" in capped.text


async def test_auto_runs_only_what_the_allow_list_serves(make_client: ClientFactory) -> None:
    """auto is forward mode with vmap-grad where forward mode lacks a formula
    (gamma_survival's lam): each only where DYDC_STRATEGIES serves it."""
    body = {"inputs": [[2.0, 1.5]], "params": {"lam": 0.7}, "wrt": ["lam"]}
    async with make_client(strategies="auto,forward,finite-difference") as c:
        r = await c.post(SENS.format("gamma_survival"), json=body)
        assert r.status_code == 422, r.text  # the fallback it needs is turned off
        assert "strategy forward cannot differentiate" in r.json()["detail"]
        ok = await c.post(SENS.format("linear"), json={"inputs": [3.0]})
        assert ok.json()["strategy"] == "forward" and ok.json()["derivatives"] == {"C": [3.0]}
    async with make_client(strategies="auto,vmap-grad") as c:
        r = await c.post(SENS.format("gamma_survival"), json=body)
        assert r.status_code == 200, r.text
        assert r.json()["strategy"] == "vmap-grad"
        # dS/dlam = -t (lam t)^(a-1) e^(-lam t) / Gamma(a)
        a, t, lam = 2.0, 1.5, 0.7
        expected = -t * (lam * t) ** (a - 1) * math.exp(-lam * t) / math.gamma(a)
        assert r.json()["derivatives"]["lam"] == [pytest.approx(expected, rel=1e-12)]
        ok = await c.post(SENS.format("linear"), json={"inputs": [3.0]})
        assert ok.json()["strategy"] == "vmap-grad"
    async with make_client(strategies="auto,finite-difference") as c:
        r = await c.post(SENS.format("linear"), json={"inputs": [3.0]})
        assert r.status_code == 422, r.text
        assert r.json()["type"] == "urn:dydc:problem:strategy-disabled"
        assert r.json()["detail"].endswith("name one of: finite-difference")


# -- running work stops when nobody waits for it --------------------------------------------


async def test_a_disconnect_stops_a_running_job(served: Served) -> None:
    before = value(await served.metrics(), "dydc_cancelled_total", reason="disconnect")
    talk = Conversation(served.app, SENS.format("logistic_rk4") + "?strategy=reverse-loop",
                        orjson.dumps(HEAVY))
    talk.body(orjson.dumps(HEAVY))
    await served.until_heavy_runs()
    talk.disconnect()
    with anyio.fail_after(60):
        await talk.task
    assert talk.sent == []  # nobody to answer
    with anyio.fail_after(60):  # the worker stops it at its next slice
        while served.engine.worker.workers[0].heavy_job is not None:
            await anyio.sleep(0.005)
    after = await served.metrics()
    assert value(after, "dydc_cancelled_total", reason="disconnect") == before + 1
    assert value(after, "dydc_requests_total", routine="logistic_rk4", status="499") >= 1


async def test_a_slice_boundary_honours_the_deadline(served: Served,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # priced under its deadline (a job priced over it alone is refused at once: 422), it
    # runs past it, and is stopped at the next slice
    monkeypatch.setattr(type(served.engine.pricing), "price", lambda self, job: 0.01)
    before = value(await served.metrics(), "dydc_cancelled_total", reason="deadline")
    talk = Conversation(served.app, SENS.format("logistic_rk4")
                        + "?strategy=reverse-loop&timeout_ms=400", orjson.dumps(HEAVY))
    talk.body(orjson.dumps(HEAVY))
    status, problem = await talk.answer()
    assert status == 504
    assert problem["type"] == "urn:dydc:problem:deadline-exceeded"
    assert "ran past its deadline" in problem["detail"]
    assert value(await served.metrics(), "dydc_cancelled_total",
                 reason="deadline") == before + 1


async def test_a_job_that_overruns_its_price_is_stopped_with_what_fits(
        served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    """Admitted at a price far under what it takes, a heavy job is stopped on its first
    slices (1.5x the limit projected), with the samples the limit allows at the rate it ran,
    and forward mode advised to a strategy that is not it."""
    monkeypatch.setattr(type(served.engine.pricing), "price", lambda self, job: 0.001)
    monkeypatch.setattr(served.engine.costs, "max_job_cost_s", 0.2)  # it takes about 2 s
    before = value(await served.metrics(), "dydc_cancelled_total", reason="cost")
    r = await served.client.post(SENS.format("logistic_rk4") + "?strategy=reverse-loop",
                                 json=HEAVY)
    assert r.status_code == 422, r.text
    problem = r.json()
    assert problem["type"] == "urn:dydc:problem:cost-exceeded"
    assert "the job was stopped after" in problem["detail"]
    assert "over the limit of 0.2 s (DYDC_MAX_JOB_COST)" in problem["detail"]
    fit = int(problem["detail"].split("send at most about ")[1].split()[0])
    assert 1 <= fit < len(T)
    assert problem["detail"].endswith("samples a request or use strategy=forward")
    assert value(await served.metrics(), "dydc_cancelled_total", reason="cost") == before + 1


def test_a_stopped_job_is_told_what_fits_and_forward_mode_only_if_it_is_not_that() -> None:
    """The samples that fit follow the strategy's cost in N: linear for forward mode, the
    square root of the limit's share for an O(N^2) one."""
    from app.engine.runtime.jobs import Job, JobKind
    from app.engine.runtime.worker import _overran

    routines = discover()
    costs = CostModel(max_job_cost_s=10.0)
    costs._routines["logistic_rk4"] = RoutineCost(pass_s=0.0, sample_s=1e-6)

    def job(strategy: str | None, n: int = 1000) -> Job:
        return Job(JobKind.SENSITIVITIES, routines["logistic_rk4"],
                   torch.zeros(n, 2, dtype=torch.float64), {"r": 0.3, "K": 50.0}, ("r",),
                   strategy, torch.float64)

    for strategy in ("forward", "auto", "forward-dual", None):
        detail = str(_overran(job(strategy), 0.1, 40.0, costs))
        assert detail.endswith("send at most about 250 samples a request"), detail
    quadratic = str(_overran(job("reverse-loop"), 0.1, 40.0, costs))  # 1000 / sqrt(4)
    assert quadratic.endswith(" samples a request or use strategy=forward"), quadratic
    assert 490 <= int(quadratic.split("send at most about ")[1].split()[0]) <= 500
    assert str(_overran(job("forward", n=1), 0.5, 40.0, costs)).endswith(
        "one sample costs that much: ask for less of it (fewer wrt, order 1)")


async def test_light_requests_are_served_between_the_slices_of_a_heavy_one(
        served: Served) -> None:
    heavy = asyncio.ensure_future(served.client.post(
        SENS.format("logistic_rk4") + "?strategy=reverse-loop", json=HEAVY))
    await served.until_heavy_runs()
    for i in range(5):
        r = await served.client.post(SENS.format("linear"),
                                     json={"inputs": [1.0, 2.0], "params": {"C": float(i)}})
        assert r.status_code == 200
        assert r.json()["values"] == [float(i), 2.0 * i]
        assert not heavy.done(), "a light request waited for the whole heavy job"
    r = await heavy
    assert r.status_code == 200, r.text
    body = r.json()
    for t, y, dr in zip(T, body["values"], body["derivatives"]["r"], strict=True):
        assert (y, dr) == pytest.approx(logistic(t), rel=1e-9, abs=1e-12)


# -- bodies ---------------------------------------------------------------------------------


async def test_too_many_samples_are_413_before_the_body_is_parsed(
        served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    def never(body: bytes) -> Any:
        raise AssertionError("the body was parsed")

    monkeypatch.setattr(v1_module, "parse_document", never)
    limit = served.engine.limits.max_samples
    flat = b'{"inputs": [' + b"1," * limit + b'1], "params": {"C": 1}}'
    rows = b'{"inputs": [' + b"[1,2]," * limit + b'[1,2]]}'
    for routine, body in (("linear", flat), ("exponential_decay", rows)):
        r = await served.client.post(SENS.format(routine), content=body,
                                     headers={"content-type": "application/json"})
        assert r.status_code == 413, r.text
        assert f"inputs has {limit + 1} samples" in r.json()["detail"]
        assert "DYDC_MAX_SAMPLES" in r.json()["detail"]


async def test_a_body_is_refused_as_soon_as_its_arrived_bytes_prove_too_many_samples(
        served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    """The count runs over the chunks as they arrive: once the first chunk holds more rows
    than the limit, the body's bytes are released while the rest is still on its way; the
    rest is read and dropped, and the 413 keeps the connection (no reset mid-upload)."""
    def never(body: bytes) -> Any:
        raise AssertionError("the body was parsed")

    monkeypatch.setattr(v1_module, "parse_document", never)
    limit = served.engine.limits.max_samples
    first = b'{"inputs": [' + b"[1]," * (limit + 1)
    rest = b"[1]," * 1000 + b'[1]], "params": {"C": 1}}'
    talk = Conversation(served.app, SENS.format("linear"), first + rest)
    talk.body(first, more=True)
    with anyio.fail_after(10):  # its declared length is held from before the first chunk...
        while not (talk.waiting and served.app.state.bodies.used == 0):  # ...until refused
            await anyio.sleep(0.001)
    assert not talk.sent, "answered before the body was read"
    talk.body(rest[:100], more=True)
    talk.body(rest[100:])
    status, problem = await talk.answer()
    assert status == 413, problem
    assert f"inputs has more than {limit} samples" in problem["detail"]
    headers = dict(talk.sent[0]["headers"])
    assert b"connection" not in headers  # read to its end: the connection is kept


async def test_a_body_over_its_byte_limit_while_it_is_dropped_still_closes() -> None:
    """A body refused for its samples is read to its end only within DYDC_MAX_BODY_BYTES: one
    sent without Content-Length that goes past it is cut off, and the connection closed."""
    async for s in _served(max_body_bytes=4000, max_samples=100):
        limit = s.engine.limits.max_samples
        assert 4 * (limit + 1) < 4000
        talk = Conversation(s.app, SENS.format("linear"), b"", declared=False)
        talk.body(b'{"inputs": [' + b"[1]," * (limit + 1), more=True)
        talk.body(b" " * 4000, more=True)
        with anyio.fail_after(30):
            await talk.task
        assert talk.sent[0]["status"] == 413
        assert "DYDC_MAX_BODY_BYTES" in orjson.loads(talk.sent[1]["body"])["detail"]
        assert dict(talk.sent[0]["headers"])[b"connection"] == b"close"


async def test_v2_shapes_over_the_limit_are_413_before_the_tensors_are_read(
        served: Served) -> None:
    limit = served.engine.limits.max_samples
    r = await served.client.post(INFER.format("linear"), json={
        "inputs": [{"name": "x", "datatype": "FP64", "shape": [limit + 1], "data": [1.0]}]})
    assert r.status_code == 413 and f"[{limit + 1}, ...]" in r.json()["error"]


async def test_bodies_in_flight_are_bounded() -> None:
    async for s in _served(max_inflight_body_bytes=1000, max_body_bytes=2000):
        body = orjson.dumps({"inputs": list(range(150)), "params": {"C": 2.0}})
        assert 500 < len(body) < 1000
        metrics = await s.metrics()
        before = value(metrics, "dydc_requests_total", routine="linear", status="503")
        refused = value(metrics, "dydc_rejections_total", reason="body_bytes")
        first = Conversation(s.app, SENS.format("linear"), body)
        first.body(body[:500], more=True)  # holds the 500 bytes that arrived
        with anyio.fail_after(30):
            while s.app.state.bodies.used < 500:
                await anyio.sleep(0.005)
        second = await s.client.post(SENS.format("linear"), content=body,
                                     headers={"content-type": "application/json"})
        assert second.status_code == 503, second.text
        assert second.headers["retry-after"] == "1"
        assert "DYDC_MAX_INFLIGHT_BODY_BYTES" in second.json()["detail"]
        first.body(body[500:])
        status, answer = await first.answer()
        assert status == 200 and answer["derivatives"]["C"] == [float(i) for i in range(150)]
        assert s.app.state.bodies.used == 0  # released once parsed
        again = await s.client.post(SENS.format("linear"), content=body,
                                    headers={"content-type": "application/json"})
        assert again.status_code == 200
        metrics = await s.metrics()
        assert value(metrics, "dydc_requests_total", routine="linear",
                     status="503") == before + 1
        assert value(metrics, "dydc_rejections_total", reason="body_bytes") == refused + 1


async def test_declared_but_unsent_bytes_do_not_hold_the_budget() -> None:
    """Four bodies that declare nearly the whole budget each and send one byte hold four
    bytes: an honest body beside them is served (it was 503 while declared lengths were
    held)."""
    async for s in _served(max_inflight_body_bytes=1000):
        declared = b"[" * 990
        attackers = [Conversation(s.app, SENS.format("linear"), declared) for _ in range(4)]
        for attacker in attackers:
            attacker.body(b"{", more=True)
        with anyio.fail_after(30):
            while s.app.state.bodies.used < 4:
                await anyio.sleep(0.005)
        body = orjson.dumps({"inputs": list(range(150)), "params": {"C": 2.0}})
        honest = await s.client.post(SENS.format("linear"), content=body,
                                     headers={"content-type": "application/json"})
        assert honest.status_code == 200, honest.text
        assert honest.json()["derivatives"]["C"] == [float(i) for i in range(150)]
        assert s.app.state.bodies.used == 4
        for attacker in attackers:
            attacker.disconnect()
            with anyio.fail_after(30):
                await attacker.task
        assert s.app.state.bodies.used == 0


async def test_bodies_over_the_size_limit_are_counted_as_rejections() -> None:
    async for s in _served(max_body_bytes=2000):
        refused = value(await s.metrics(), "dydc_rejections_total", reason="body_size")
        big = orjson.dumps({"inputs": list(range(1000))})
        r = await s.client.post(SENS.format("linear"), content=big,
                                headers={"content-type": "application/json"})
        assert r.status_code == 413, r.text
        r = await s.client.post(SENS.format("linear"), content=gzip.compress(b" " * 5000),
                                headers={"content-type": "application/json",
                                         "content-encoding": "gzip"})
        assert r.status_code == 413, r.text
        assert value(await s.metrics(), "dydc_rejections_total",
                     reason="body_size") == refused + 2


# -- every bad input is a 4xx -----------------------------------------------------------------


@pytest.mark.parametrize(("body", "needle"), [
    ({"inputs": [{"name": "x", "datatype": "FP64", "shape": [1] * 65, "data": [1.0]}]},
     "65 dimensions"),
    ({"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1.0]}],
      "parameters": {"C": 10**400}}, "parameters.C is an integer too large"),
    ({"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1.0]}],
      "parameters": {"timeout": 10**400}}, "parameters.timeout is an integer too large"),
], ids=["65-dimensions", "401-digit-parameter", "401-digit-timeout"])
async def test_v2_inputs_that_gave_500_are_400(served: Served, body: dict[str, Any],
                                               needle: str) -> None:
    r = await served.client.post(INFER.format("linear"), content=json.dumps(body),
                                 headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]


async def test_an_unexpected_error_is_500_and_logged_with_its_traceback(
        served: Served, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    def broken(*args: Any, **kwargs: Any) -> bytes:
        raise RuntimeError("a bug in the encoder")

    monkeypatch.setattr(v1_module, "encode_result", broken)
    r = await served.client.post(SENS.format("linear"), json={"inputs": [1]})
    assert r.status_code == 500
    assert r.json()["detail"] == "internal error; it has been logged"
    assert "a bug in the encoder" not in r.text
    logged = [rec for rec in caplog.records if rec.exc_info and "unhandled" in rec.message]
    assert logged and logged[0].exc_info is not None
    assert isinstance(logged[0].exc_info[1], RuntimeError)


async def test_too_many_samples_are_counted_as_samples_not_as_body_size() -> None:
    """A batch over DYDC_MAX_SAMPLES, counted in the raw bytes (v1) or read from a declared
    shape (v2), is a 413 of its own kind, counted under reason="samples"."""
    async for s in _served(max_samples=100):
        before = await s.metrics()
        r = await s.client.post(SENS.format("linear"),
                                content=orjson.dumps({"inputs": list(range(150))}),
                                headers={"content-type": "application/json"})
        assert r.status_code == 413, r.text
        assert r.json()["type"] == "urn:dydc:problem:batch-too-large"
        v2 = {"inputs": [{"name": "x", "shape": [150], "datatype": "FP64",
                          "data": list(range(150))}]}
        r = await s.client.post("/v2/models/linear/infer", json=v2)
        assert r.status_code == 413, r.text
        after = await s.metrics()
        assert value(after, "dydc_rejections_total", reason="samples") == \
            value(before, "dydc_rejections_total", reason="samples") + 2
        assert value(after, "dydc_rejections_total", reason="body_size") == \
            value(before, "dydc_rejections_total", reason="body_size")


@pytest.mark.parametrize(("order", "wrt", "advised"), [
    (2, ("r",), "vmap-grad"),  # jacrev and reverse-loop are cheaper, but first order only
    (1, ("r", "t"), "vmap-grad"),  # an input feature: per sample, which they cannot take
    (1, ("r",), "jacrev"),
])
def test_the_cheaper_strategy_advised_can_serve_the_request(
        order: int, wrt: tuple[str, ...], advised: str) -> None:
    """A refusal for cost names a strategy to use instead: one that can serve the request
    (it named jacrev for a Hessian, which jacrev then refused)."""
    import torch

    from app.engine import JobKind, Limits
    from app.engine.errors import CostExceeded
    from app.engine.runtime.jobs import Job
    from app.engine.runtime.pricing import Pricing

    class Costs:
        def estimate(self, routine: object, strategy: str | None, n: int, p: int,
                     pairs: int = 0) -> float:
            return {"jacrev": 0.001, "reverse-loop": 0.002, "vmap-grad": 1.0}.get(
                strategy or "", 50.0)

    rk4 = discover()["logistic_rk4"]
    pricing = Pricing(Costs(), Limits(max_samples=10**6, caps={}, max_job_cost_s=10.0),  # type: ignore[arg-type]
                      None, [torch.device("cpu")])
    job = Job(JobKind.SENSITIVITIES, rk4, torch.tensor([[10.0, 1.0]], dtype=torch.float64),
              {"r": 0.3, "K": 100.0}, wrt, "forward", torch.float64, order=order)
    with pytest.raises(CostExceeded, match=f"use strategy={advised} "):
        pricing.price(job)


async def test_a_pretty_printed_body_at_the_sample_limit_is_served() -> None:
    """json.dumps(indent=2) puts a line break between the last row's "]" and the list's; the
    count went on past the rows into wrt's brackets and refused a body of exactly
    DYDC_MAX_SAMPLES samples with 413."""
    async for s in _served(max_samples=50):
        doc = {"inputs": [[float(i)] for i in range(1, 51)], "params": {"C": 2}, "wrt": ["C"]}
        r = await s.client.post(SENS.format("linear"), content=json.dumps(doc, indent=2),
                                headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text
        assert r.json()["derivatives"]["C"] == [float(i) for i in range(1, 51)]
        doc["inputs"].append([51.0])
        r = await s.client.post(SENS.format("linear"), content=json.dumps(doc, indent=2),
                                headers={"content-type": "application/json"})
        assert r.status_code == 413 and "51 samples" in r.json()["detail"], r.text
