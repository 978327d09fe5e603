"""Dynamic batching across requests, backpressure, deadlines and worker restarts."""

from __future__ import annotations

import asyncio
import random
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

import app.engine.runtime.worker as worker_module
from tests.support import ClientFactory, scrape, value
from tests.support.closed_forms import black_scholes_greeks, exponential_decay, logistic_growth

pytestmark = pytest.mark.anyio

SENS = "/v1/routines/{}/sensitivities"


@dataclass
class Gate:
    """The device worker held inside its launches until ``release`` is set."""

    entered: threading.Event  # set when the worker has taken a batch and waits at the gate
    release: threading.Event

    async def holding(self) -> None:
        """Until the worker has taken a batch and is held at the gate."""
        assert await asyncio.to_thread(self.entered.wait, 30), "no launch reached the gate"


async def queued(client: httpx.AsyncClient, jobs: int) -> None:
    """Until ``jobs`` jobs wait in the queue (dydc_queue_depth), the worker's taken not
    counted."""
    for _ in range(3000):
        if value(scrape((await client.get("/metrics")).text), "dydc_queue_depth") == jobs:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{jobs} jobs never waited in the queue")


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    """Holds the device worker inside its next launch until ``release`` is set."""
    held_gate = Gate(threading.Event(), threading.Event())
    real = worker_module.Executor.run_batch

    def held(*args: Any, **kwargs: Any) -> Any:
        # the tests that hold the worker turn launches on the event loop off: held there,
        # the loop would wait for a release that only it can give
        assert threading.current_thread().name.startswith("dydc-worker"), \
            "a gated launch ran on the event loop: give the test inline_launch_ms=0"
        held_gate.entered.set()
        held_gate.release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(worker_module.Executor, "run_batch", held)
    yield held_gate
    held_gate.release.set()


async def test_hundreds_of_concurrent_requests_batch_and_each_gets_its_own_answer(
        make_client: ClientFactory) -> None:
    rng = random.Random(11)
    async with make_client(max_delay_ms=5) as c:
        before = scrape((await c.get("/metrics")).text)

        async def one(i: int) -> None:
            sigma, r = rng.uniform(0.05, 0.8), rng.uniform(-0.02, 0.1)
            rows = [[rng.uniform(50, 150), rng.uniform(50, 150), rng.uniform(0.1, 3)]
                    for _ in range(rng.randint(1, 16))]
            strategy = ("auto", "forward", "forward-dual", "vmap-grad", "jacfwd")[i % 5]
            resp = await c.post(SENS.format("black_scholes_call") + f"?strategy={strategy}",
                                json={"inputs": rows, "params": {"sigma": sigma, "r": r}})
            assert resp.status_code == 200, resp.text
            body = resp.json()
            assert body["params"] == {"sigma": sigma, "r": r}
            for row, y, vega, rho in zip(rows, body["values"], body["derivatives"]["sigma"],
                                         body["derivatives"]["r"], strict=True):
                ref = black_scholes_greeks(row[0], row[1], row[2], sigma, r)
                assert y == pytest.approx(ref["price"], rel=1e-9, abs=1e-9)
                assert vega == pytest.approx(ref["sigma"], rel=1e-9, abs=1e-9)
                assert rho == pytest.approx(ref["r"], rel=1e-9, abs=1e-9)

        await asyncio.gather(*(one(i) for i in range(300)))
        after = scrape((await c.get("/metrics")).text)
    launches = (value(after, "dydc_batch_requests_count")
                - value(before, "dydc_batch_requests_count"))
    requests = value(after, "dydc_batch_requests_sum") - value(before, "dydc_batch_requests_sum")
    assert requests == 300
    assert launches < requests, "no launch held more than one request"


async def test_a_failing_request_fails_alone(make_client: ClientFactory,
                                             gate: Gate) -> None:
    async with make_client(max_delay_ms=50, inline_launch_ms=0) as c:
        def post(n0: float, r: float) -> Any:
            return c.post(SENS.format("logistic_growth"),
                          json={"inputs": [[n0, 1.0], [n0 + 1, 2.0]], "params": {"r": r}})

        blocker = asyncio.ensure_future(post(5.0, 0.1))  # holds the worker
        await gate.holding()
        tasks = [asyncio.ensure_future(post(float(i + 1), 0.1 * i)) for i in range(6)]
        bad = asyncio.ensure_future(post(0.0, 0.3))  # N0 = 0: division by zero, non-finite
        await queued(c, 7)  # all seven wait: the next launch takes them together
        gate.release.set()
        assert (await blocker).status_code == 200
        bad_response = await bad
        assert bad_response.status_code == 422
        assert "sample 0" in bad_response.json()["detail"]
        for i, task in enumerate(tasks):
            resp = await task
            assert resp.status_code == 200, resp.text
            n0, r, K = float(i + 1), 0.1 * i, 100.0
            for (x0, t), y in zip([[n0, 1.0], [n0 + 1, 2.0]], resp.json()["values"], strict=True):
                assert y == pytest.approx(logistic_growth(x0, t, r, K)["y"], rel=1e-12)


async def test_a_raising_routine_is_isolated_in_its_batch() -> None:
    import torch

    from app.engine.runtime.executor import Executor
    from app.engine.runtime.jobs import Job, JobKind
    from routines import Param, routine

    @routine(description="sqrt that refuses negative inputs", params=[Param("C", 1.0)],
             inputs=["x"], vectorized=True)
    def picky(x: torch.Tensor, *, C: torch.Tensor) -> torch.Tensor:
        if bool((x < 0).any()):
            raise ValueError("x must be >= 0")
        return C * x.sqrt()

    jobs = [Job(JobKind.SENSITIVITIES, picky, torch.tensor([[v], [4.0]], dtype=torch.float64),
                {"C": c}, ("C",), "forward", torch.float64)
            for v, c in [(1.0, 2.0), (-1.0, 3.0), (9.0, 4.0)]]
    results = Executor(torch.device("cpu"), chunk=1000).run_batch(jobs)
    assert isinstance(results[1], Exception) and "x must be >= 0" in str(results[1])
    for i in (0, 2):
        r = results[i]
        assert not isinstance(r, Exception)
        x = jobs[i].inputs[:, 0]
        assert r.values[:, 0].tolist() == (jobs[i].params["C"] * x.sqrt()).tolist()
        assert r.derivatives["C"][:, 0].tolist() == x.sqrt().tolist()


async def test_large_requests_run_in_chunks(make_client: ClientFactory) -> None:
    async with make_client(max_batch_samples=7, max_queue_samples=7) as c:
        x = [0.5 * i for i in range(50)]
        resp = await c.post(SENS.format("exponential_decay"),
                            json={"inputs": [[1.0, t] for t in x], "params": {"k": 0.3}})
        assert resp.status_code == 200, resp.text
        got = resp.json()["derivatives"]["k"]
        assert got == pytest.approx([exponential_decay(1.0, t, 0.3)["k"] for t in x],
                                     rel=1e-12, abs=1e-300)


async def test_queue_full_is_503_with_retry_after(make_client: ClientFactory,
                                                  gate: Gate) -> None:
    async with make_client(max_queue_samples=10, max_batch_samples=10,
                           inline_launch_ms=0) as c:
        body = {"inputs": list(range(10))}
        running = asyncio.ensure_future(c.post(SENS.format("linear"), json=body))
        await gate.holding()  # taken by the worker, held at the gate
        waiting = asyncio.ensure_future(c.post(SENS.format("linear"), json=body))
        await queued(c, 1)  # queued: 10 samples, the bound
        refused = await c.post(SENS.format("linear"), json={"inputs": [1]})
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["type"] == "urn:dydc:problem:queue-full"
        assert "DYDC_MAX_QUEUE_SAMPLES" in refused.json()["detail"]
        gate.release.set()
        assert (await running).status_code == 200
        assert (await waiting).json()["derivatives"]["C"] == [float(i) for i in range(10)]
        metrics = scrape((await c.get("/metrics")).text)
        assert value(metrics, "dydc_rejections_total", reason="queue_full") >= 1


async def test_expired_deadline_is_504(make_client: ClientFactory,
                                       gate: Gate) -> None:
    async with make_client(inline_launch_ms=0) as c:
        running = asyncio.ensure_future(c.post(SENS.format("linear"), json={"inputs": [1]}))
        await gate.holding()
        late = await c.post(SENS.format("linear") + "?timeout_ms=100", json={"inputs": [2]})
        assert late.status_code == 504, late.text
        assert late.json()["type"] == "urn:dydc:problem:deadline-exceeded"
        # the deadline it was given, then the wait (the wait had been called the deadline)
        assert re.search(r"deadline \(100 ms\) passed while it waited in the queue "
                         r"\(\d+ ms\).*raise timeout_ms", late.json()["detail"]), late.text
        late_v2 = await c.post("/v2/models/linear/infer", json={
            "inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [2.0]}],
            "parameters": {"timeout": 100_000}})  # microseconds
        assert late_v2.status_code == 504, late_v2.text
        assert "deadline (100 ms)" in late_v2.json()["error"]
        assert "raise parameters.timeout (in microseconds)" in late_v2.json()["error"]
        bad = await c.post(SENS.format("linear") + "?timeout_ms=-5", json={"inputs": [2]})
        assert bad.status_code == 422
        gate.release.set()
        assert (await running).status_code == 200
        metrics = scrape((await c.get("/metrics")).text)
        assert value(metrics, "dydc_rejections_total", reason="deadline") >= 1


class WorkerCrash(BaseException):
    """Not an Exception: escapes every handler and kills the worker thread."""


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
async def test_a_dead_worker_is_restarted(make_client: ClientFactory,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    real = worker_module.Executor.run_batch
    crashed = threading.Event()

    def crash_once(*args: Any, **kwargs: Any) -> Any:
        if not crashed.is_set():
            crashed.set()
            raise WorkerCrash
        return real(*args, **kwargs)

    monkeypatch.setattr(worker_module.Executor, "run_batch", crash_once)
    async with make_client(inline_launch_ms=0) as c:  # (the worker's thread launches)
        before = scrape((await c.get("/metrics")).text)
        lost = await c.post(SENS.format("linear"), json={"inputs": [1]})
        assert lost.status_code == 503, lost.text
        assert "retry" in lost.json()["detail"]
        for _ in range(200):
            ready = await c.get("/readyz")
            if ready.status_code == 200:
                break
            assert "worker on cpu" in ready.json()["detail"]
            await asyncio.sleep(0.05)
        assert ready.status_code == 200
        ok = await c.post(SENS.format("linear"), json={"inputs": [1, 2], "params": {"C": 3}})
        assert ok.json()["derivatives"]["C"] == [1.0, 2.0]
        after = scrape((await c.get("/metrics")).text)
        assert value(after, "dydc_worker_restarts_total") - value(
            before, "dydc_worker_restarts_total") == 1


async def test_one_worker_per_device_shares_the_queue(make_client: ClientFactory) -> None:
    async with make_client(device="cpu,cpu") as c:
        assert (await c.get("/readyz")).json()["device"] == "cpu,cpu"

        async def one(k: float) -> None:
            resp = await c.post(SENS.format("exponential_decay"),
                                json={"inputs": [[2.0, 1.0], [1.0, 2.0]], "params": {"k": k}})
            assert resp.status_code == 200, resp.text
            assert resp.json()["derivatives"]["k"] == pytest.approx(
                [exponential_decay(2.0, 1.0, k)["k"], exponential_decay(1.0, 2.0, k)["k"]],
                rel=1e-12)

        await asyncio.gather(*(one(0.01 * i) for i in range(100)))


async def test_out_of_memory_halves_the_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    """A launch over 8 samples 'runs out of device memory': the request is retried in halves
    until its chunks fit, and answers correctly; at one sample it gives up with 503."""
    import torch

    import app.engine.runtime.executor as compute
    from app.engine import JobKind
    from app.engine.errors import ServiceUnavailable
    from app.engine.runtime.jobs import Job
    from routines import discover

    real = compute._compute
    sizes: list[int] = []

    def small_device(jobs: Any, inputs: torch.Tensor, ex: compute.Executor) -> Any:
        sizes.append(int(inputs.shape[0]))
        if inputs.shape[0] > 8:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(jobs, inputs, ex)

    monkeypatch.setattr(compute, "_compute", small_device)
    linear = discover()["linear"]
    x = torch.arange(50, dtype=torch.float64).reshape(-1, 1)
    job = Job(JobKind.SENSITIVITIES, linear, x, {"C": 2.0}, ("C",), "forward", torch.float64)
    result = compute.Executor(torch.device("cpu"), chunk=40).run_job(job)
    assert result.derivatives["C"][:, 0].tolist() == x[:, 0].tolist()
    assert result.values[:, 0].tolist() == (2 * x[:, 0]).tolist()
    assert sizes[:3] == [40, 20, 10] and max(sizes[3:]) <= 8 and sum(sizes[3:]) == 50

    def no_memory(jobs: Any, inputs: torch.Tensor, ex: compute.Executor) -> Any:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(compute, "_compute", no_memory)
    with pytest.raises(ServiceUnavailable, match="out of memory"):
        compute.Executor(torch.device("cpu"), chunk=4).run_job(job)


@pytest.mark.parametrize(("strategy", "order", "n", "launches"), [
    ("vmap-grad", 2, 5000, [2048, 2048, 904]),  # second order, eager: chunks
    ("forward", 2, 5000, [2048, 2048, 904]),  # (no compiled graph here either)
    ("vmap-grad", 1, 5000, [5000]),  # reverse mode at first order: chunks of 16,384
    ("vmap-grad", 1, 20_000, [16_384, 3616]),
    ("forward", 1, 20_000, [20_000]),  # forward mode: one launch, up to the batch size
])
def test_what_keeps_a_tape_per_sample_runs_in_chunks_without_a_graph(
        monkeypatch: pytest.MonkeyPatch, strategy: str, order: int, n: int,
        launches: list[int]) -> None:
    """Nested AD and reverse mode hold every step's intermediates per sample (6 GB for
    15,000 samples of logistic_rk4's Hessian by vmap-grad; its gradient at 200,000 samples
    went past 24 GB): in one launch a large job could exhaust memory and could not be stopped
    at its deadline or cost; in chunks (executor.memory_chunk) it can (each chunk yields its
    progress to the worker, which stops it there)."""
    import torch

    import app.engine.runtime.executor as compute
    from app.engine import JobKind
    from app.engine.runtime.jobs import Job
    from routines import discover

    real = compute._compute
    sizes: list[int] = []

    def counted(jobs: Any, inputs: torch.Tensor, ex: compute.Executor) -> Any:
        sizes.append(int(inputs.shape[0]))
        return real(jobs, inputs, ex)

    monkeypatch.setattr(compute, "_compute", counted)
    linear = discover()["linear"]
    x = torch.linspace(0, 1, n, dtype=torch.float64).reshape(-1, 1)
    job = Job(JobKind.SENSITIVITIES, linear, x, {"C": 2.0}, ("C",), strategy, torch.float64,
              order=order)
    sliced = compute.Executor(torch.device("cpu"), chunk=262_144).run_sliced(job, 0.05)
    progress = []
    try:
        while True:
            progress.append(next(sliced))
    except StopIteration as done:
        result = done.value
    assert sizes == launches
    assert len(progress) == len(launches) - 1  # a chance to stop it after each chunk
    assert result.derivatives["C"][:, 0].tolist() == x[:, 0].tolist()


def test_what_one_launch_cannot_hold_goes_to_the_heavy_lane() -> None:
    """Heavy jobs run alone and sliced, where the worker checks their deadline and their
    cost after each slice; a second-order job in several launches must be one of them (run
    as a light job, its launches were drained in one go: a 200,000-sample Hessian ran 134 s
    past a 30 s deadline)."""
    import torch

    from app.engine import JobKind
    from app.engine.runtime.batching import JobQueue
    from app.engine.runtime.executor import REVERSE_CHUNK, SECOND_ORDER_CHUNK
    from app.engine.runtime.jobs import Job
    from routines import discover

    queue = JobQueue(10**7, 262_144, 0.002)
    linear = discover()["linear"]

    def job(n: int, order: int, strategy: str = "vmap-grad") -> Job:
        return Job(JobKind.SENSITIVITIES, linear, torch.zeros(n, 1, dtype=torch.float64),
                   {"C": 1.0}, ("C",), strategy, torch.float64, order=order)

    assert queue.heavy(job(SECOND_ORDER_CHUNK + 1, 2))
    assert not queue.heavy(job(SECOND_ORDER_CHUNK, 2))
    assert not queue.heavy(job(SECOND_ORDER_CHUNK + 1, 1))
    assert queue.heavy(job(REVERSE_CHUNK + 1, 1))  # reverse mode's tape
    assert not queue.heavy(job(REVERSE_CHUNK + 1, 1, "forward"))


def test_a_job_priced_over_two_slices_goes_to_the_heavy_lane_and_runs_in_slices() -> None:
    """A launch that fits every sample bound can still take seconds (262,144 samples of
    logistic_rk4 eagerly: 9 s in one launch, light requests waiting behind it): priced
    over the queue's bound it runs alone, its eager launches about a slice each by price."""
    import torch

    from app.engine import JobKind
    from app.engine.runtime.batching import JobQueue
    from app.engine.runtime.executor import PRICED_CHUNK_MIN, Executor, _chunk
    from app.engine.runtime.jobs import Job
    from routines import discover

    queue = JobQueue(10**7, 262_144, 0.002, heavy_cost_s=0.1)
    linear = discover()["linear"]

    def job(n: int, cost_s: float) -> Job:
        made = Job(JobKind.SENSITIVITIES, linear, torch.zeros(n, 1, dtype=torch.float64),
                   {"C": 1.0}, ("C",), "forward", torch.float64)
        made.cost_s = cost_s
        return made

    assert queue.heavy(job(100_000, 3.0)) and not queue.heavy(job(100_000, 0.05))
    ex = Executor(torch.device("cpu"), 262_144, None, 0.05)
    assert _chunk(job(1_000_000, 3.0), ex, sliced=True) == 1_000_000 * 0.05 // 3.0  # 60
    assert _chunk(job(100_000, 3.0), ex) == 262_144  # drained whole: no slices to serve
    assert _chunk(job(100_000, 0.01), ex, sliced=True) == 262_144  # within a slice
    # a few thousand samples at least: below, a launch's fixed time is most of it (an
    # ODE's 40-sample Hessian was cut in launches of 2, each as long as the whole)
    assert _chunk(job(100_000, 30.0), ex, sliced=True) == PRICED_CHUNK_MIN
    assert _chunk(job(40, 3.0), ex, sliced=True) == 262_144  # one launch


def test_a_heavy_job_its_deadline_cannot_hold_is_not_told_to_retry() -> None:
    """Behind heavy work, a job that its deadline leaves no time for is a 503 to retry only
    if it would fit alone; one priced over its deadline alone is a 422 saying to raise
    timeout_ms (a client retried it, in vain). The running total's rounding, left by jobs
    gone, is not work ahead (it was: "heavy jobs ahead need about 0.0 s", 503)."""
    import time

    import torch

    from app.engine import JobKind
    from app.engine.errors import CostExceeded, QueueFull
    from app.engine.runtime.batching import JobQueue
    from app.engine.runtime.jobs import Job
    from routines import discover

    queue = JobQueue(10**7, 1000, 0.002)
    linear = discover()["linear"]

    def job(cost_s: float, deadline_in_s: float) -> Job:
        heavy = Job(JobKind.SENSITIVITIES, linear, torch.zeros(2000, 1, dtype=torch.float64),
                    {"C": 1.0}, ("C",), "reverse-loop", torch.float64,
                    deadline=time.perf_counter() + deadline_in_s)
        heavy.cost_s = cost_s
        return heavy

    first = job(0.1, 60)
    queue.put(first)
    queue.withdraw(first)
    queue._heavy_cost += 1e-17  # what adding and taking back 0.1, 0.2, 0.7 can leave
    # priced over its deadline even alone: no wait would help (it was admitted, then cut at
    # its deadline with a 504 after that much device time)
    with pytest.raises(CostExceeded, match=r"estimated at 5.00 s .*leaves \(0\.\d\d s\): raise"):
        queue.put(job(5.0, 0.3))
    queue.put(job(5.0, 60))  # nothing ahead, and it fits: admitted
    with pytest.raises(CostExceeded, match=r"estimated at 2.00 s .* raise timeout_ms"):
        queue.put(job(2.0, 1.0))  # 5 s ahead, and over its 1 s alone
    with pytest.raises(QueueFull, match="retry after a short wait"):
        queue.put(job(0.5, 1.0))  # would fit alone: later, it may
    with pytest.raises(CostExceeded, match=r"estimated at 0.05 s .*leaves \(0\.00\d+ s, "):
        queue.put(job(0.05, 0.005))  # a deadline of milliseconds is not "0.00 s"


def test_a_large_second_order_job_asks_for_the_graph_its_small_launches_would_not() -> None:
    """Second derivatives without a graph run in launches of 2,048 samples, below the
    launch size that asks for a compiled graph: a job as large as those that compile asks
    itself, so that the next one runs through the graph (four 65,536-row Hessians ran eagerly,
    220 ms each against 8 ms compiled, until the small launches' count made the kind hot)."""
    import torch

    import app.engine.runtime.executor as compute
    from app.engine import JobKind
    from app.engine.runtime.jobs import Job
    from routines import discover

    asked: list[tuple[int, int]] = []

    class Graphs:  # no graph yet for any kind; records what is asked for
        min_samples = 4096

        def launch_seconds(self, problem: Any, device: Any, order: int = 1,
                           cross: bool = False) -> float | None:
            return None

        def applies(self, problem: Any, order: int = 1, cross: bool = False) -> bool:
            return True

        def request(self, problem: Any, order: int = 1, cross: bool = False,
                    device: Any = None) -> None:
            asked.append((problem.n, order))

    linear = discover()["linear"]
    ex = compute.Executor(torch.device("cpu"), chunk=262_144, compiled=Graphs())  # type: ignore[arg-type]

    def job(n: int, order: int) -> Job:
        return Job(JobKind.SENSITIVITIES, linear, torch.zeros(n, 1, dtype=torch.float64),
                   {"C": 2.0}, ("C",), "forward", torch.float64, order=order)

    assert compute._chunk(job(5000, 2), ex) == compute.SECOND_ORDER_CHUNK
    assert asked == [(5000, 2)]
    assert compute._chunk(job(3000, 2), ex) == compute.SECOND_ORDER_CHUNK  # under min_samples
    assert asked == [(5000, 2)]
