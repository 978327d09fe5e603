"""Helpers shared by tests that start real server processes or read the app's routes."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
import pytest

from app.engine.builds import Artefact, Kind, Samples
from app.main import create_app
from routines import Routine

__all__ = [
    "ROOT",
    "GatedBuilder",
    "ServerProcess",
    "access_log_lines",
    "free_port",
    "needs_cxx",
    "route_paths",
    "server_process",
]

ROOT = Path(__file__).resolve().parent.parent


# Inductor compiles C++ on the CPU; without a compiler the service runs forward mode eagerly
# (tested), and the tests of compiled graphs skip.
needs_cxx = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "g++")) is None,
    reason="compiled forward mode needs a C++ compiler (g++: apt-get install g++)")


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    proc: subprocess.Popen[str]
    url: str  # http://127.0.0.1:<port>
    log: IO[str]

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, f"the server exited:\n{self.output()}"
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"not ready within {timeout} s:\n{self.output()}"
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM (the server drains), then SIGKILL if it has not exited after 30 s."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextmanager
def server_process(argv: Sequence[str], env: Mapping[str, str],
                   port: int) -> Iterator[ServerProcess]:
    """Start ``argv`` (a server on 127.0.0.1:``port``), wait for /readyz, stop it at the end."""
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(list(argv), cwd=ROOT, env=dict(env), stdout=log,
                                stderr=subprocess.STDOUT, text=True)
        server = ServerProcess(proc, f"http://127.0.0.1:{port}", log)
        try:
            server.wait_ready()
            yield server
        finally:
            server.stop()


def route_paths() -> set[str]:
    """Every path the app serves: its routes, those of included routers, and the OpenAPI paths."""
    application = create_app()
    paths = set(application.openapi()["paths"])
    pending = list(application.routes)
    while pending:
        route = pending.pop()
        if isinstance(path := getattr(route, "path", None), str):
            paths.add(path)
        pending += getattr(getattr(route, "original_router", route), "routes", [])
    return paths


@contextmanager
def access_log_lines() -> Iterator[list[str]]:
    """The access log's lines (app.http.access_log) written while the block runs."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler = Collect()
    logger = logging.getLogger("dydc.access")
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
