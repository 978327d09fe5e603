"""Builds that step aside while large requests are served.

The build process already runs at a lower priority (niceness) and under Linux's SCHED_IDLE
policy, so that it takes only CPU time nothing else wants. That is not enough where two
virtual CPUs share one physical core, as on the 2-vCPU development machine: a build running
beside a large request (N = 1e5, mostly JSON) made it up to 1.7x slower than with no build,
because the two share the core's execution units and caches, not its time slices
(bench/bench_compile.py, docs/compiled.md).

So while at least one large request is being served, and for a moment after the last one
(``linger_s``: its client is still reading the answer, and a client sending one large request
after another sends the next), :class:`Pacer` holds the build process to a share of the time:
it stops the process group (SIGSTOP: the build and the compilers it runs; the process alone
while it is still starting, before it has a group of its own) and continues it (SIGCONT) in
turns. Otherwise it runs freely; it always makes progress, at ``share`` of its speed at
worst, so a service under a steady stream of large requests still gets its graphs. The turns
are short (40 ms) so that every large request sees about the same share of build beside it:
in turns of 150 ms, a request of 150 ms could meet two of the build's turns or none.

Why by hand: the kernel's CPU bandwidth control (the cgroup ``cpu.max`` quota) does this
without signals, but it needs a cgroup delegated to the service, which a container rarely
has; psutil's ``suspend``/``resume`` are these same signals for one process, and the
compilers are other processes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

__all__ = ["Pacer"]


class Pacer:
    """Holds a process (and the process group it leads, once it leads one) to ``share`` of
    the time, in turns of ``period_s``, while any :meth:`large` block is open and for
    ``linger_s`` after the last one closed. ``process`` gives the pid to pace, or None while
    there is none (the build process starts at the first build or at warm-up)."""

    def __init__(self, process: Callable[[], int | None], share: float,
                 period_s: float = 0.04, linger_s: float = 0.25) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], not {share}")
        self.share = share
        self.period_s = period_s
        self.linger_s = linger_s
        self._process = process
        self._cond = threading.Condition()
        self._large = 0  # large requests being served
        self._until = 0.0  # time.monotonic() until which pacing lingers after the last one
        self._stopped: int | None = None  # the process stopped now, if any
        self._thread: threading.Thread | None = None
        self._closed = False
        self.stopped_s = 0.0  # time the group spent stopped, for tests and the log

    @contextlib.contextmanager
    def large(self) -> Iterator[None]:
        """Serving a large request: the builds get ``share`` of the time until it ends."""
        if self.share >= 1:
            yield
            return
        with self._cond:
            self._large += 1
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="dydc-build-pacer",
                                                daemon=True)
                self._thread.start()
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self._large -= 1
                if self._large == 0:
                    self._until = time.monotonic() + self.linger_s
                self._cond.notify_all()

    def quiet(self, timeout: float) -> bool:
        """Wait until no large request is being served (False if ``timeout`` passed first);
        the lingering after one does not count."""
        with self._cond:
            return self._cond.wait_for(lambda: self._large == 0 or self._closed, timeout)

    def _pacing(self) -> bool:
        return self._large > 0 or time.monotonic() < self._until

    def close(self) -> None:
        """Continue the group if it is stopped, and pace no more."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            self._continue()
        if self._thread is not None:
            self._thread.join(5)

    def _signal(self, pid: int, sig: signal.Signals) -> bool:
        """``sig`` to the group that ``pid`` leads, else (still starting) to ``pid`` alone."""
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):  # gone, or replaced by a new one
            return False
        return True

    def _continue(self) -> None:
        if self._stopped is not None:
            self._signal(self._stopped, signal.SIGCONT)
            self._stopped = None

    def _run(self) -> None:
        off_s = self.period_s * (1 - self.share)
        on_s = self.period_s * self.share
        with self._cond:
            while not self._closed:
                if not self._pacing():
                    self._cond.wait()
                    continue
                pid = self._process()
                if pid is None:  # no build process yet: look again in a while
                    self._cond.wait(self.period_s)
                    continue
                if self._signal(pid, signal.SIGSTOP):
                    self._stopped = pid
                    began = time.monotonic()
                    # stopped for off_s, or less if pacing ends (noticed when the last large
                    # request ends, or at the end of the turn after its lingering) or we close
                    self._cond.wait_for(lambda: not self._pacing() or self._closed, off_s)
                    self.stopped_s += time.monotonic() - began
                    self._continue()
                # running for on_s whatever happens meanwhile: a build always gets its share
                self._cond.wait_for(lambda: self._closed, on_s)
