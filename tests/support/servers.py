"""Live services on 127.0.0.1 for the tests that need a real socket: a server process
(:func:`server_process`) or uvicorn on a thread of this process (:func:`server_thread`), each
ready (its /readyz answers 200) before the test gets it and stopped at the end."""

from __future__ import annotations

import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO

import httpx
import uvicorn

from app.config import Settings
from app.main import create_app
from tests.support.environment import ROOT

__all__ = ["SMALL_LIMITS", "ServerProcess", "free_port", "server_process", "server_thread",
           "wait_ready"]

# Chunks must stay under 100 samples and 16 KiB of body: about 600 numbers of JSON.
SMALL_LIMITS = {"DYDC_MAX_SAMPLES": "100", "DYDC_MAX_BODY_BYTES": "16384",
                "DYDC_MAX_BATCH_SAMPLES": "64", "DYDC_REVERSE_LOOP_MAX_N": "30"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, alive: Callable[[], bool], output: Callable[[], str],
               timeout: float = 60) -> None:
    """Until ``url``/readyz answers 200; fails if the server dies or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        assert alive(), f"the server exited:\n{output()}"
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"not ready within {timeout} s:\n{output()}"
        time.sleep(0.05)


@dataclass
class ServerProcess:
    proc: subprocess.Popen[str]
    url: str  # http://127.0.0.1:<port>
    log: IO[str]

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def wait_ready(self, timeout: float = 60) -> None:
        wait_ready(self.url, lambda: self.proc.poll() is None, self.output, timeout)

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


@contextmanager
def server_thread(settings: Settings) -> Iterator[str]:
    """The app under uvicorn on a thread of this process, which has torch imported already
    (a second process took 28 s to start on the loaded 2-core machine); its URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False, ws="none",
                                           http="h11", lifespan="on"))
    thread = threading.Thread(target=server.run, name=f"dydc-{port}", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, thread.is_alive, lambda: "(uvicorn on a thread: see the log)")
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=60)
