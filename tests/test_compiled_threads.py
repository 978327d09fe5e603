"""The OpenMP threads of a compiled launch on the CPU (app.engine.compiled.threads): one below
a grain of samples, the calling thread's own count from it, and that count back after the
launch, an error included; a CUDA launch is left alone."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest
import torch

from app.engine.compiled.threads import GRAIN, threads_for

CPU = torch.device("cpu")


@pytest.fixture
def in_a_thread() -> Iterator[Callable[[Callable[[], None]], None]]:
    """Runs a probe in a thread of its own, which takes 3 threads as its OpenMP count (as the
    device worker's thread takes DYDC_TORCH_THREADS); torch's count is restored after."""
    before = torch.get_num_threads()

    def run(probe: Callable[[], None]) -> None:
        failures: list[BaseException] = []

        def body() -> None:
            try:
                torch.set_num_threads(3)
                torch.get_num_threads()  # ATen's first call in a thread sets its OpenMP
                # count to torch's: the device worker's thread makes it before any launch
                probe()
            except BaseException as exc:  # handed to the test's thread
                failures.append(exc)

        thread = threading.Thread(target=body)
        thread.start()
        thread.join(30)
        assert not thread.is_alive()
        if failures:
            raise failures[0]

    yield run
    torch.set_num_threads(before)


def test_a_small_launch_runs_serial_and_a_large_one_on_the_threads_count(
        in_a_thread: Callable[[Callable[[], None]], None]) -> None:
    seen: dict[str, int] = {}

    def probe() -> None:
        with threads_for(16, CPU):
            seen["16"] = torch.get_num_threads()
        seen["after"] = torch.get_num_threads()
        with threads_for(GRAIN - 1, CPU):
            seen["below the grain"] = torch.get_num_threads()
        with threads_for(GRAIN, CPU):
            seen["the grain"] = torch.get_num_threads()
        with threads_for(16, torch.device("cuda")):  # the device type alone is read
            seen["cuda"] = torch.get_num_threads()
        with pytest.raises(RuntimeError), threads_for(16, CPU):
            raise RuntimeError("the launch failed")
        seen["after an error"] = torch.get_num_threads()

    in_a_thread(probe)
    assert seen == {"16": 1, "after": 3, "below the grain": 1, "the grain": 3, "cuda": 3,
                    "after an error": 3}

