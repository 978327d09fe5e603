"""A stand-in for the compiled mode's build process, finished when the test says."""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path

from app.engine.compiled.builds import Artefact, Kind, Samples
from routines import Routine

__all__ = ["GatedBuilder"]


class GatedBuilder:
    """A builder whose one build finishes when the test says (``done``), in the thread the
    test sets its result from; it records the kinds asked for, and ``events``."""

    def __init__(self, cache_dir: Path, events: list[str] | None = None) -> None:
        self.cache_dir = cache_dir
        self.events = events if events is not None else []
        self.kinds: list[Kind] = []
        self.done: Future[Artefact] = Future()

    def submit(self, kind: Kind, samples: Samples, routine: Routine) -> Future[Artefact]:
        self.events.append("build asked for")
        self.kinds.append(kind)
        return self.done

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass
