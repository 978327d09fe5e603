"""The builds behind compiled forward mode: which kinds are asked for, being built, built,
loaded on which device, or refused for good (app.engine.compiled.forward serves launches
through them).

A build runs in a process of its own (:class:`~app.engine.compiled.builds.ProcessBuilder`);
a finished one is loaded in the builder's thread for the devices served so far, once no large
request is in progress (:class:`~app.engine.compiled.pacing.Pacer`), and published between
launches by :meth:`GraphCatalogue.swap_in`, which loads what was not loaded ahead. A kind is
refused (and counted by reason) when its build is refused or fails, when ``max_graphs`` kinds
are built or being built, or when its graph is retired.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import KeysView, Mapping
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

import torch

from app import metrics
from app.engine.compiled.builds import (
    Artefact,
    Builder,
    BuildRefused,
    Graph,
    Kind,
    Samples,
    cached,
    forget,
    load,
)
from app.engine.compiled.pacing import Pacer
from app.engine.differentiation.strategies import Problem
from routines import Routine

__all__ = ["DEFAULT_BUILD_S", "GraphCatalogue"]

log = logging.getLogger(__name__)

# A finished build waits at most this long for a moment with no large request in progress
# before it is loaded (the load holds the interpreter's lock for a while, in this process)
_LOAD_QUIET_WAIT_S = 30.0

_Loaded = tuple[Kind, str]  # a kind, on one device
# A build's time before any has finished (one routine's graph: tens of seconds to two minutes
# on the 2-core development machine, docs/compiled.md)
DEFAULT_BUILD_S = 60.0


class GraphCatalogue:
    """Every kind's build and graphs: built by ``builder`` (whose ``cache_dir`` also holds
    earlier builds, taken as built), at most ``max_graphs`` kinds, loads paced by ``pacer``.

    Its lock guards the records of builds: asked for, being built, built, loaded ahead,
    refused. The published graphs (:attr:`loaded`) are added by :meth:`swap_in` and removed
    by :meth:`retire`, both called by the device workers around their launches, and read by
    launches without the lock (one dict operation each)."""

    def __init__(self, builder: Builder, *, max_graphs: int = 128,
                 pacer: Pacer | None = None) -> None:
        self.builder = builder
        self.pacer = pacer
        self.max_graphs = max_graphs
        self._lock = threading.Lock()
        self._routines: dict[Kind, Routine] = {}
        self._pending: dict[Kind, Future[Artefact]] = {}
        self._artefacts: dict[Kind, Artefact] = {}
        self._graphs: dict[_Loaded, Graph] = {}
        self._devices: set[torch.device] = set()  # those swap_in has served
        self._preloaded: dict[_Loaded, Graph] = {}  # loaded when built, swapped in next
        self._unsettled: set[Kind] = set()  # asked for, and not yet built and loaded, or refused
        self._settled = threading.Condition(self._lock)
        self._refused: dict[Kind, str] = {}

    @property
    def cache_dir(self) -> Path:
        return self.builder.cache_dir

    @property
    def artefacts(self) -> Mapping[Kind, Artefact]:
        """The kinds built and ready to load (or loaded), read-only."""
        return MappingProxyType(self._artefacts)

    @property
    def loaded(self) -> Mapping[_Loaded, Graph]:
        """The graphs published, by kind and device (``str(device)``), read-only."""
        return MappingProxyType(self._graphs)

    @property
    def pending(self) -> KeysView[Kind]:
        """The kinds being built, or built and not yet taken in."""
        return self._pending.keys()

    @property
    def refusals(self) -> Mapping[Kind, str]:
        """Why each kind refused runs eagerly for good (a reason of
        app.metrics.COMPILE_REFUSAL_REASONS), read-only."""
        return MappingProxyType(self._refused)

    def serving(self, kind: Kind, place: str) -> tuple[Kind, Graph] | None:
        """The graph published on ``place`` that serves ``kind`` and the kind it was built
        for: the kind's own, else for shared parameters the per-sample one; or None."""
        for served in (kind,) if kind.per_sample else (kind, replace(kind, per_sample=True)):
            graph = self._graphs.get((served, place))
            if graph is not None:
                return served, graph
        return None

    def ready(self, kind: Kind, place: str) -> Kind | None:
        """The kind whose graph serves ``kind`` on ``place`` once published (as
        :meth:`serving` chooses), counting one built and not yet published; or None."""
        for served in (kind, replace(kind, per_sample=True)):
            if (served, place) in self._graphs or served in self._artefacts:
                return served
        return None

    def typical_build_s(self) -> float:
        """How long a build takes here: the mean of those finished since start-up, else
        ``DEFAULT_BUILD_S``."""
        with self._lock:
            took = [a.seconds for a in self._artefacts.values() if a.seconds > 0]
        return sum(took) / len(took) if took else DEFAULT_BUILD_S

    def request(self, kind: Kind, problem: Problem) -> None:
        """Ask for ``kind`` (the kind of ``problem``, whose samples the build traces and
        checks) to be built, unless it is built, being built or refused (returns at once).
        An earlier build stored in the cache directory is taken as built."""
        with self._lock:
            if kind in self._pending or kind in self._artefacts or kind in self._refused:
                return
            if len(self._artefacts) + len(self._pending) >= self.max_graphs:
                self._refuse(kind, "max_graphs", f"DYDC_COMPILE_MAX_GRAPHS={self.max_graphs} "
                             "graphs are built or being built")
                return
            self._routines[kind] = problem.routine
            found = cached(kind, problem.routine, self.cache_dir)
            if found is not None:
                done: Future[Artefact] = Future()
                done.set_result(found)
            else:
                done = self.builder.submit(kind, Samples.of(problem), problem.routine)
            self._pending[kind] = done
            self._unsettled.add(kind)
        asker = threading.get_ident()
        # run at once, in this thread, when the build is already done (found in the cache
        # directory): then nothing is loaded here (a device worker may be asking, in a launch)
        done.add_done_callback(lambda _: self._built(kind, ahead=threading.get_ident() != asker))

    def _built(self, kind: Kind, ahead: bool = True) -> None:
        """A build has finished: its graph is loaded for the devices served so far (with
        ``ahead``, in the builder's thread, once no large request is in progress) and
        published at their next :meth:`swap_in`, which loads what was not loaded ahead; or
        the kind is refused."""
        try:
            self._take(kind, ahead)
        finally:
            with self._lock:
                self._unsettled.discard(kind)
                self._settled.notify_all()

    def _take(self, kind: Kind, ahead: bool) -> None:
        # the kind stays pending until it is published or refused, so that nobody asks for
        # it again meanwhile
        with self._lock:
            try:
                artefact = self._pending[kind].result()
            except Exception as exc:  # refused, or the build process died or was stopped
                del self._pending[kind]
                if isinstance(exc, BuildRefused):
                    self._refuse(kind, exc.reason, str(exc))
                else:
                    self._refuse(kind, "compile", f"{type(exc).__name__}: {exc}")
                return
            devices = [d for d in self._devices if d.type == kind.device] if ahead else []
        if devices and self.pacer is not None:
            self.pacer.quiet(_LOAD_QUIET_WAIT_S)
        loaded = {}
        for device in devices:  # here, not in the device worker between its launches
            try:
                loaded[(kind, str(device))] = load(artefact, self.cache_dir, device)
            except Exception:  # swap_in tries again, and retires it if it fails there too
                log.debug("preloading %s failed", _describe(kind), exc_info=True)
        with self._lock:
            self._preloaded.update(loaded)
            self._artefacts[kind] = artefact
            del self._pending[kind]
        metrics.child(metrics.COMPILED_GRAPHS, kind.label).inc()
        if artefact.seconds:
            metrics.COMPILE_SECONDS.observe(artefact.seconds)
        log.info("compiled %s ready (%s)", _describe(kind),
                 f"built in {artefact.seconds:.1f} s" if artefact.seconds
                 else "from the cache directory")

    def swap_in(self, device: torch.device) -> int:
        """Take in the graphs built since the last call, for ``device``; returns how many.
        Call between launches: a graph built while the service ran was loaded when its build
        finished, in the builder's thread, so this only publishes it; one found in the cache
        directory (or not loaded ahead) is loaded here, in milliseconds. Never a build."""
        loaded = 0
        place = str(device)
        with self._lock:
            self._devices.add(device)
            fresh = [(kind, artefact, self._preloaded.pop((kind, place), None))
                     for kind, artefact in self._artefacts.items()
                     if kind.device == device.type and (kind, place) not in self._graphs]
        for kind, artefact, graph in fresh:
            try:
                self._graphs[(kind, place)] = graph if graph is not None else load(
                    artefact, self.cache_dir, device)
            except Exception as exc:
                self.retire(kind, place, "compile", f"loading it failed: {exc}")
                continue
            loaded += 1
        return loaded

    def settle(self, timeout: float | None = None) -> bool:
        """Wait until every kind asked for is built and loaded, or refused (False if
        ``timeout`` passed first)."""
        with self._settled:
            return self._settled.wait_for(lambda: not self._unsettled, timeout)

    def close(self) -> None:
        """Stop the build process (builds in progress are abandoned)."""
        if self.pacer is not None:
            self.pacer.close()
        self.builder.close()

    def retire(self, kind: Kind, place: str, reason: str, why: str) -> None:
        """Take the kind's graph out of service for good (and its files out of the cache
        directory): its launches run eagerly from now on, refused for ``reason``."""
        with self._lock:
            self._graphs.pop((kind, place), None)
            self._preloaded.pop((kind, place), None)
            self._artefacts.pop(kind, None)
            self._refuse(kind, reason, why)
            routine = self._routines.get(kind)
        if routine is not None:
            forget(kind, routine, self.cache_dir)

    def _refuse(self, kind: Kind, reason: str, why: str) -> None:
        if kind in self._refused:
            return
        self._refused[kind] = reason
        metrics.child(metrics.COMPILE_REFUSALS, reason).inc()
        log.warning("%s runs eagerly (%s): %s", _describe(kind), reason,
                    why.split("\n")[0])


def _describe(kind: Kind) -> str:
    """A kind in words, for the log."""
    layout = "per-sample" if kind.per_sample else "shared"
    what = "forward mode" if kind.order == 1 else \
        f"order 2{' with cross terms' if kind.cross else ''}"
    if not kind.wrt:
        what = "plain evaluation"
    features = f"; input features {', '.join(kind.features)}" if kind.features else ""
    wrt = f"wrt {', '.join(kind.wrt)}, " if kind.wrt else ""
    return (f"{what} of routine {kind.routine} ({wrt}{kind.dtype}, "
            f"{kind.device}, {layout} parameters{features})")
