"""Builds step aside while large requests are served (app.engine.compiled.pacing): the build process
group, its compilers included, is stopped and continued in turns while a large request is in
progress, runs freely otherwise, and is never left stopped; the pipeline holds the pacing for
exactly the large requests, from the moment it knows them to be large."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from app.engine import Engine
from app.engine.compiled.builds import ProcessBuilder
from app.engine.compiled.pacing import Pacer
from tests.support import ClientFactory

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads process states from /proc")

SENS = "/v1/routines/linear/sensitivities"
# a build process and the compiler it runs: a process in a group of its own, and its child
_GROUP = ("import subprocess, sys\n"
          "child = subprocess.Popen([sys.executable, '-c', "
          "'import time\\nwhile True: time.sleep(0.002)'])\n"
          "print(child.pid, flush=True)\n"
          "child.wait()\n")


def state(pid: int) -> str:
    """The process's state letter: T while stopped."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


@pytest.fixture
def group() -> Iterator[tuple[int, int]]:
    """(leader, child): the leader's pid is the group's id."""
    leader = subprocess.Popen([sys.executable, "-c", _GROUP], stdout=subprocess.PIPE,
                              text=True, start_new_session=True)
    assert leader.stdout is not None
    child = int(leader.stdout.readline())
    yield leader.pid, child
    with contextlib.suppress(ProcessLookupError):
        os.killpg(leader.pid, signal.SIGKILL)
    leader.wait(10)
    leader.stdout.close()


def states_until(pids: tuple[int, ...], wanted: set[tuple[int, bool]],
                 timeout: float = 10) -> set[tuple[int, bool]]:
    """Poll the processes' states, collecting (pid, stopped) pairs, until all of ``wanted``
    were seen or ``timeout`` passed."""
    seen: set[tuple[int, bool]] = set()
    deadline = time.monotonic() + timeout
    while not wanted <= seen and time.monotonic() < deadline:
        seen |= {(pid, state(pid) == "T") for pid in pids}
        time.sleep(0.002)
    return seen


def states_for(pids: tuple[int, ...], seconds: float) -> set[tuple[int, bool]]:
    """The (pid, stopped) pairs seen while polling for ``seconds``."""
    seen: set[tuple[int, bool]] = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        seen |= {(pid, state(pid) == "T") for pid in pids}
        time.sleep(0.002)
    return seen


def record_signals(pacer: Pacer) -> list[str]:
    """The signals the pacer sends from now on, in order (SIGSTOP, SIGCONT), in a list the
    test adds its own events to."""
    events: list[str] = []
    send = pacer._signal

    def recorded(pid: int, sig: signal.Signals) -> bool:
        sent = send(pid, sig)
        events.append(sig.name)  # once sent: a continued process is running by now
        return sent

    pacer._signal = recorded  # type: ignore[method-assign]
    return events


def until(condition: Callable[[], bool], events: list[str], timeout: float = 10) -> None:
    """Poll ``condition``; fail, showing ``events``, if it does not hold within ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"did not happen; the events: {events}"
        time.sleep(0.002)


def continued(events: list[str]) -> bool:
    """No stop is in force: the last signal sent, if any, was a continue."""
    signals = [e for e in events if e.startswith("SIG")]
    return not signals or signals[-1] == "SIGCONT"


def assert_paired(events: list[str], after: str) -> None:
    """Every stop was followed by a continue, the last one included, and after the event
    ``after`` at most one more stop came (one the pacer thread had decided on before it)."""
    signals = [e for e in events if e.startswith("SIG")]
    assert signals == ["SIGSTOP", "SIGCONT"] * (len(signals) // 2), events
    assert events[events.index(after):].count("SIGSTOP") <= 1, events


@linux_only
def test_while_a_large_request_is_served_the_group_runs_a_share_of_the_time(
        group: tuple[int, int]) -> None:
    leader, child = group
    pacer = Pacer(lambda: leader, share=0.3, period_s=0.1, linger_s=0)
    events = record_signals(pacer)
    running = {(leader, False), (child, False)}
    try:
        assert states_for(group, 0.3) == running
        with pacer.large():
            # the group's processes are stopped in turns, the compiler with the build, and
            # run in between: both states are seen for both
            wanted = {(pid, stopped) for pid in group for stopped in (True, False)}
            assert states_until(group, wanted) == wanted
        events.append("ended")
        # the last large request has ended: continued at once, and left running
        until(lambda: continued(events), events)
        assert states_for(group, 0.3) == running
        assert_paired(events, "ended")
        assert events.count("SIGSTOP") >= 1 and pacer.stopped_s > 0
    finally:
        pacer.close()


@linux_only
def test_a_process_still_starting_is_paced_alone_never_the_services_group() -> None:
    """Before its start-up gives it a group of its own, the build process shares the
    service's group: it alone is stopped (were the group signalled, this test would stop
    too)."""
    starting = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: "
                                 "time.sleep(0.002)"])
    pacer = Pacer(lambda: starting.pid, share=0.3, period_s=0.1, linger_s=0)
    events = record_signals(pacer)
    try:
        assert os.getpgid(starting.pid) == os.getpgrp()
        with pacer.large():
            wanted = {(starting.pid, True), (starting.pid, False)}
            assert states_until((starting.pid,), wanted) == wanted
        events.append("ended")
        until(lambda: continued(events), events)
        assert states_for((starting.pid,), 0.3) == {(starting.pid, False)}
        assert_paired(events, "ended")
    finally:
        pacer.close()
        starting.kill()
        starting.wait(10)


@linux_only
def test_pacing_lingers_after_the_last_large_request(group: tuple[int, int],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Its client is still reading the answer, or about to send the next one. The pacer's
    clock is the test's: the lingering ends when the test moves it past ``linger_s``."""
    leader, child = group
    offset = [0.0]
    monkeypatch.setattr(sys.modules[Pacer.__module__], "time", SimpleNamespace(
        monotonic=lambda: time.monotonic() + offset[0]))
    pacer = Pacer(lambda: leader, share=0.3, period_s=0.1, linger_s=60)
    events = record_signals(pacer)
    try:
        with pacer.large():
            until(lambda: "SIGSTOP" in events, events)
        events.append("ended")
        # lingering: stopped again in turns after the end, more than the one turn in progress
        until(lambda: events[events.index("ended"):].count("SIGSTOP") >= 2, events)
        assert states_until(group, {(leader, True)}) >= {(leader, True)}
        offset[0] = 60.0
        events.append("lingering over")
        until(lambda: continued(events), events)
        assert states_for(group, 0.3) == {(leader, False), (child, False)}
        assert_paired(events, "lingering over")
    finally:
        pacer.close()


@linux_only
def test_closing_continues_a_stopped_group(group: tuple[int, int]) -> None:
    leader, child = group
    pacer = Pacer(lambda: leader, share=0.01, period_s=5.0)  # stopped for 4.95 s a turn
    with pacer.large():
        assert (leader, True) in states_until(group, {(leader, True)})
        pacer.close()
        assert states_until(group, {(leader, False), (child, False)}, 2) >= {
            (leader, False), (child, False)}
        time.sleep(0.3)
        assert states_for(group, 0.3) == {(leader, False), (child, False)}


@linux_only
def test_a_full_share_or_no_build_process_stops_nothing(group: tuple[int, int]) -> None:
    leader, _ = group
    full = Pacer(lambda: leader, share=1.0, period_s=0.05)
    none_yet = Pacer(lambda: None, share=0.1, period_s=0.05)
    with full.large(), none_yet.large():
        seen = states_for(group, 0.5)
    assert not any(stopped for _, stopped in seen)
    assert full.stopped_s == none_yet.stopped_s == 0
    full.close()
    none_yet.close()
    with pytest.raises(ValueError, match="share"):
        Pacer(lambda: None, share=0)


def test_quiet_waits_for_the_last_large_request() -> None:
    pacer = Pacer(lambda: None, share=0.5)
    assert pacer.quiet(0)
    with pacer.large():
        with pacer.large():
            assert not pacer.quiet(0.05)
        assert not pacer.quiet(0.05)
    assert pacer.quiet(0)
    pacer.close()


@linux_only
def test_the_build_process_has_a_group_of_its_own(tmp_path: Path) -> None:
    """So that pacing stops its compilers with it, and never the service's own group."""
    builder = ProcessBuilder(tmp_path)
    try:
        assert builder.process() is None and builder.process_group() is None  # not started
        pid = builder.pool().submit(os.getpid).result(timeout=120)
        assert builder.process() == builder.process_group() == pid == os.getpgid(pid)
        assert pid != os.getpgrp()
    finally:
        builder.close()
    assert builder.process_group() is None


@pytest.mark.anyio
async def test_the_pipeline_paces_builds_for_exactly_the_large_requests(
        make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []

    @contextlib.contextmanager
    def serving_large(self: Engine) -> Iterator[None]:
        events.append("large")
        try:
            yield
        finally:
            events.append("done")

    prepare = Engine.prepare

    def recorded_prepare(self: Engine, *args: object, **kwargs: object) -> object:
        events.append("prepare")
        return prepare(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Engine, "serving_large", serving_large)
    monkeypatch.setattr(Engine, "large", lambda self, n: n >= 100)
    monkeypatch.setattr(Engine, "prepare", recorded_prepare)
    async with make_client() as c:
        small = await c.post(SENS, json={"inputs": list(range(10)), "params": {"C": 2}})
        assert small.status_code == 200
        assert events == ["prepare"]

        events.clear()
        many = await c.post(SENS, json={"inputs": list(range(100)), "params": {"C": 2}})
        assert many.status_code == 200
        assert many.json()["derivatives"]["C"] == [float(i) for i in range(100)]
        assert events == ["prepare", "large", "done"]  # large once its samples are known

        events.clear()  # a large body: paced from before it is read and parsed
        padded = b'{"inputs": [1.5, 2.5], "params": {"C": 3}' + b" " * (1 << 20) + b"}"
        big = await c.post(SENS, content=padded, headers={"content-type": "application/json"})
        assert big.status_code == 200
        assert big.json()["derivatives"]["C"] == [1.5, 2.5]
        assert events == ["large", "prepare", "done"]

        events.clear()  # refused: the pacing ends with the request all the same
        refused = await c.post(SENS + "?strategy=nope", content=padded,
                               headers={"content-type": "application/json"})
        assert refused.status_code == 422
        assert events == ["large", "prepare", "done"]
