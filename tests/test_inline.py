"""Small launches on the event loop (app.engine.runtime.inline): which jobs the lane takes,
how it batches them, when it leaves them to the worker's queue, and the service answering
through it."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
import torch

import app.engine.runtime.worker as worker_module
from app.engine.errors import DeadlineExceeded, ServiceUnavailable
from app.engine.runtime.batching import JobQueue
from app.engine.runtime.executor import batch_key
from app.engine.runtime.inline import INLINE_SAMPLES, InlineLane
from app.engine.runtime.jobs import Job, JobKind, JobResult
from routines.elementary import exponential_decay, linear
from tests.support import ClientFactory, scrape, value

pytestmark = pytest.mark.anyio

SENS = "/v1/routines/{}/sensitivities"


class _LaunchedBefore(dict[Any, tuple[float, int]]):
    """Every kind launched before, in 10 us for 4 samples, unless set otherwise."""

    def get(self, key: Any, default: Any = None) -> tuple[float, int]:
        return super().get(key, (1e-5, 4))


class Worker:
    """A device worker as the lane sees it: ``execute`` answers each job with its own
    inputs (or does what ``then`` says), and records the batches."""

    def __init__(self) -> None:
        self.launching = threading.Lock()
        self.ready = True
        self.batches: list[list[Job]] = []
        self.then: Any = None
        self.launch_s: dict[Any, tuple[float, int]] = _LaunchedBefore()

    def execute(self, batch: list[Job]) -> None:
        self.batches.append(batch)
        if self.then is not None:
            self.then(batch)
        for job in batch:
            if not job.future.done():
                job.future.set_result(JobResult(job.inputs, {}, "forward", "cpu", 0.0, 0.0))


def _job(n: int = 4, routine: Any = linear, strategy: str | None = "forward",
         deadline_s: float = 30.0, cost_s: float = 1e-5) -> Job:
    job = Job(JobKind.SENSITIVITIES, routine,
              torch.ones(n, len(routine.inputs), dtype=torch.float64), {},
              (routine.param_names[0],), strategy, torch.float64,
              deadline=time.perf_counter() + deadline_s, cost_s=cost_s)
    job.future = asyncio.get_running_loop().create_future()
    return job


def _lane(worker: Worker, queue: JobQueue | None = None, budget_s: float = 1.0) -> InlineLane:
    """A lane whose turn, unless a test is about its end, outlasts every launch in it: with
    the service's 1 ms, a first launch that logged a traceback could spend the turn, and
    the job behind it went to a queue no worker takes (the test hung)."""
    return InlineLane(worker, queue or JobQueue(10**6, 10**6, 0.0), budget_s)


async def _turn() -> None:
    """Until the loop has run the lane's turn (scheduled with call_soon)."""
    for _ in range(3):
        await asyncio.sleep(0)


async def test_what_the_lane_takes_and_what_it_leaves_to_the_queue() -> None:
    worker, queue = Worker(), JobQueue(10**6, 10**6, 0.0)
    lane = _lane(worker, queue, budget_s=1e-3)
    assert lane.offer(_job())
    first = _job(routine=exponential_decay)
    worker.launch_s = {batch_key(_job()): (1e-5, 4)}
    assert not lane.offer(first), "its kind's first launch: the worker's (and its time)"
    worker.launch_s[batch_key(first)] = (2e-3, 4)
    assert not lane.offer(first), "its kind's last launch took longer than the budget"
    worker.launch_s[batch_key(first)] = (5e-4, 1)
    assert not lane.offer(first), "4 samples at the rate of its kind's last launch: 2 ms"
    worker.launch_s[batch_key(first)] = (5e-4, 4)
    assert lane.offer(first)
    assert not lane.offer(_job(cost_s=2e-3)), "priced over the budget"
    assert not lane.offer(_job(n=INLINE_SAMPLES + 1)), "more samples than a serial launch"
    assert not lane.offer(_job(strategy="reverse-loop")), "unbatchable: the heavy lane"
    worker.ready = False
    assert not lane.offer(_job()), "the worker is warming up"
    worker.ready = True
    queue.close()
    assert not lane.offer(_job()), "shutting down: the queue refuses it"


async def test_a_launch_takes_what_its_kinds_rate_fits_in_the_budget() -> None:
    worker = Worker()
    lane = _lane(worker)
    job = _job()
    worker.launch_s[batch_key(job)] = (0.5, 8)  # 8 samples in half the budget: 16 fit
    jobs = [job, *(_job() for _ in range(4))]  # 4 samples each
    for j in jobs:
        assert lane.offer(j)
    await _turn()
    assert [len(b) for b in worker.batches] == [4, 1]


async def test_a_job_whose_kind_slowed_after_its_offer_still_runs() -> None:
    """A scenarios request offers two jobs of one kind (its base and its revaluation): the
    first's launch can lower the kind's rate under the second's size, and the lane made an
    empty batch of it, whose launch failed ("a launch on the event loop failed", in a loop
    until the turn's budget was spent). The job offered at the old rate runs in a launch of
    its own."""
    worker = Worker()
    lane = _lane(worker)
    base, revalued = _job(n=60), _job(n=60)
    key = batch_key(base)
    worker.launch_s[key] = (0.1, 10)  # 100 samples fit the 1 s budget: one job a launch
    worker.then = lambda batch: worker.launch_s.__setitem__(key, (2.0, 30))  # now 30
    assert lane.offer(base) and lane.offer(revalued)
    await _turn()
    assert worker.batches == [[base], [revalued]]
    assert (await revalued.future).values is revalued.inputs


async def test_a_launch_holds_no_more_than_dydc_max_batch_samples() -> None:
    worker = Worker()
    lane = _lane(worker, JobQueue(10**6, 8, 0.0))
    jobs = [_job() for _ in range(5)]
    for job in jobs:
        assert lane.offer(job)
    await _turn()
    assert worker.batches == [jobs[:2], jobs[2:4], jobs[4:]]


async def test_jobs_offered_together_run_in_one_launch_per_kind_on_the_loop() -> None:
    worker = Worker()
    lane = _lane(worker)
    threads: list[str] = []
    worker.then = lambda batch: threads.append(threading.current_thread().name)
    a, b = _job(), _job(n=7)
    other = _job(routine=exponential_decay)
    c = _job(n=3)
    for job in (a, b, other, c):
        assert lane.offer(job)
    assert worker.batches == [], "not before the loop's next turn"
    await _turn()
    assert worker.batches == [[a, b, c], [other]]
    assert threads == [threading.current_thread().name] * 2
    for job in (a, b, other, c):
        assert (await job.future).values is job.inputs


async def test_a_launch_holds_at_most_a_serial_launch_of_samples() -> None:
    worker = Worker()
    lane = _lane(worker)
    worker.launch_s[batch_key(_job())] = (1e-6, INLINE_SAMPLES)
    jobs = [_job(n=INLINE_SAMPLES // 2) for _ in range(3)]
    for job in jobs:
        assert lane.offer(job)
    await _turn()
    assert worker.batches == [jobs[:2], jobs[2:]]


async def test_a_busy_worker_gets_the_jobs_in_its_queue() -> None:
    worker, queue = Worker(), JobQueue(10**6, 10**6, 0.0)
    lane = _lane(worker, queue)
    worker.launching.acquire()  # the worker is launching
    jobs = [_job(), _job()]
    for job in jobs:
        assert lane.offer(job)
    await _turn()
    assert worker.batches == []
    assert queue.take(block=False) == jobs
    worker.launching.release()


async def test_the_turn_ends_with_its_budget_and_the_rest_queue() -> None:
    worker, queue = Worker(), JobQueue(10**6, 10**6, 0.0)
    lane = _lane(worker, queue, budget_s=1e-3)
    worker.then = lambda batch: time.sleep(2e-3)  # a launch longer than the turn's budget
    first, second = _job(), _job(routine=exponential_decay)
    assert lane.offer(first) and lane.offer(second)
    await _turn()
    assert worker.batches == [[first]]
    assert first.future.done()
    assert not second.future.done()
    assert queue.take(block=False) == [second]
    assert not worker.launching.locked()


async def test_a_full_queue_answers_what_the_lane_hands_over() -> None:
    worker, queue = Worker(), JobQueue(4, 10**6, 0.0)
    lane = _lane(worker, queue)
    worker.launching.acquire()
    jobs = [_job(n=4), _job(n=4)]
    for job in jobs:
        assert lane.offer(job)
    await _turn()
    assert not jobs[0].future.done()  # queued
    assert "DYDC_MAX_QUEUE_SAMPLES" in str(jobs[1].future.exception())
    worker.launching.release()


async def test_shutting_down_the_lane_runs_what_it_took_whatever_the_budget() -> None:
    worker, queue = Worker(), JobQueue(10**6, 10**6, 0.0)
    lane = _lane(worker, queue, budget_s=1e-3)
    worker.then = lambda batch: time.sleep(2e-3)  # each launch over the turn's budget
    jobs = [_job(), _job(routine=exponential_decay)]
    for job in jobs:
        assert lane.offer(job)
    queue.close()  # SIGTERM between the offers and the loop's turn
    await _turn()
    assert worker.batches == [[jobs[0]], [jobs[1]]]
    for job in jobs:
        assert (await job.future).values is job.inputs


async def _closed_with_the_worker_busy() -> tuple[Worker, InlineLane, Job]:
    """A lane holding a job when the queue closes (SIGTERM), the worker still launching."""
    worker, queue = Worker(), JobQueue(10**6, 10**6, 0.0)
    lane = _lane(worker, queue)
    job = _job()
    assert lane.offer(job)
    queue.close()
    worker.launching.acquire()
    await _turn()
    return worker, lane, job


async def test_shutting_down_with_the_worker_busy_the_lane_waits_for_it() -> None:
    worker, _, job = await _closed_with_the_worker_busy()
    await asyncio.sleep(0.02)
    assert worker.batches == [] and not job.future.done()
    worker.launching.release()
    await asyncio.wait_for(asyncio.shield(job.future), 5)
    assert worker.batches == [[job]]


async def test_the_end_of_the_grace_period_answers_what_the_lane_holds() -> None:
    worker, lane, job = await _closed_with_the_worker_busy()  # still at the period's end
    lane.fail_all(ServiceUnavailable("the service shut down"))
    assert "shut down" in str(job.future.exception())
    worker.launching.release()
    await asyncio.sleep(0.02)
    assert worker.batches == []


async def test_withdrawn_and_expired_jobs_do_not_run() -> None:
    worker = Worker()
    lane = _lane(worker)
    gone, late, kept = _job(), _job(deadline_s=-1.0), _job()
    for job in (gone, late, kept):
        assert lane.offer(job)
    assert lane.withdraw(gone)
    assert not lane.withdraw(gone)
    await _turn()
    assert worker.batches == [[kept]]
    assert isinstance(late.future.exception(), DeadlineExceeded)
    assert not gone.future.done()


async def test_a_failed_launch_answers_its_jobs_and_the_rest_still_run() -> None:
    worker = Worker()
    lane = _lane(worker)

    def fail_first(batch: list[Job]) -> None:
        if len(worker.batches) == 1:
            raise RuntimeError("a graph failed to load")

    worker.then = fail_first
    broken, fine = _job(), _job(routine=exponential_decay)
    assert lane.offer(broken) and lane.offer(fine)
    await _turn()
    error = broken.future.exception()
    assert isinstance(error, ServiceUnavailable) and "RuntimeError" in str(error)
    assert (await fine.future).values is fine.inputs
    assert not worker.launching.locked()


class Crash(BaseException):
    """Not an Exception: what kills a worker's thread."""


async def test_what_escapes_a_launch_on_the_loop_loses_no_job() -> None:
    worker, queue = Worker(), JobQueue(10**6, 10**6, 0.0)
    lane = _lane(worker, queue)

    def crash(batch: list[Job]) -> None:
        raise Crash

    worker.then = crash
    crashed, behind = _job(), _job(routine=exponential_decay)
    assert lane.offer(crashed) and lane.offer(behind)
    caught: list[BaseException] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: caught.append(context["exception"]))
    try:
        await _turn()
    finally:
        loop.set_exception_handler(None)
    assert [type(e) for e in caught] == [Crash]
    assert queue.take(block=False) == [behind], "the job behind it went to the worker"
    assert not worker.launching.locked()


# -- through the service


def _launch_threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The threads that launches run on, as they run."""
    threads: list[str] = []
    real = worker_module.Executor.run_batch

    def recorded(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(worker_module.Executor, "run_batch", recorded)
    return threads


# (a budget of 50 ms: a kind's first launch on a busy machine may take over 1 ms)
@pytest.mark.parametrize(("inline_ms", "on_loop"), [(50.0, True), (0.0, False)])
async def test_a_small_request_runs_on_the_loop_once_its_kind_launched_unless_turned_off(
        make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch, inline_ms: float,
        on_loop: bool) -> None:
    threads = _launch_threads(monkeypatch)
    loop_thread = threading.current_thread().name
    async with make_client(inline_launch_ms=inline_ms) as c:
        threads.clear()  # (warm-up's)
        for _ in range(20):  # (the worker may still hold its lock as the next one comes)
            resp = await c.post(SENS.format("linear"),
                                json={"inputs": [1, 2, 3], "params": {"C": -5}})
            assert resp.status_code == 200, resp.text
            assert resp.json()["values"] == [-5.0, -10.0, -15.0]
            assert resp.json()["derivatives"]["C"] == [1.0, 2.0, 3.0]
            if threads[-1] == loop_thread:
                break
    # the kind's first launch on the worker, timed; then on the loop, unless turned off
    assert threads[0] == "dydc-worker-cpu"
    assert (threads[-1] == loop_thread) == on_loop
    assert set(threads[1:-1]) <= {"dydc-worker-cpu"}


async def test_concurrent_small_requests_batch_on_the_loop_each_with_its_answer(
        make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    threads = _launch_threads(monkeypatch)
    loop_thread = threading.current_thread().name
    async with make_client(inline_launch_ms=50) as c:
        for _ in range(20):  # until the kind runs on the loop (its first launch does not)
            first = await c.post(SENS.format("linear"),
                                 json={"inputs": [1.0], "params": {"C": 2}})
            assert first.json()["derivatives"]["C"] == [1.0]
            if threads[-1] == loop_thread:
                break
        before = scrape((await c.get("/metrics")).text)
        threads.clear()

        async def one(i: int) -> None:
            x = [float(i), float(i + 1)]
            resp = await c.post(SENS.format("linear"), json={"inputs": x, "params": {"C": i}})
            assert resp.status_code == 200, resp.text
            assert resp.json()["values"] == [i * v for v in x]
            assert resp.json()["derivatives"]["C"] == x

        await asyncio.gather(*(one(i) for i in range(120)))
        after = scrape((await c.get("/metrics")).text)
    launches = value(after, "dydc_launches_total") - value(before, "dydc_launches_total")
    assert set(threads) == {loop_thread}
    assert launches == len(threads) < 120, "no launch held more than one request"


async def test_a_request_crashing_a_launch_on_the_loop_is_503_and_the_service_goes_on(
        make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    real = worker_module.Executor.run_batch
    crashed = threading.Event()
    loop_thread = threading.current_thread().name

    def crash_once(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread().name == loop_thread and not crashed.is_set():
            crashed.set()  # the first launch on the loop
            raise Crash
        return real(*args, **kwargs)

    monkeypatch.setattr(worker_module.Executor, "run_batch", crash_once)
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda *_: None)  # (asyncio logs what escapes a callback)
    try:
        async with make_client(inline_launch_ms=50) as c:
            for _ in range(20):  # until a launch runs on the loop (the kind's first does not)
                lost = await c.post(SENS.format("linear"), json={"inputs": [1]})
                if crashed.is_set():
                    break
                assert lost.status_code == 200, lost.text
            assert crashed.is_set()
            assert lost.status_code == 503, lost.text
            assert "retry" in lost.json()["detail"]
            ok = await c.post(SENS.format("linear"), json={"inputs": [1, 2], "params": {"C": 3}})
            assert ok.json()["derivatives"]["C"] == [1.0, 2.0]
            assert (await c.get("/readyz")).status_code == 200
    finally:
        loop.set_exception_handler(None)
