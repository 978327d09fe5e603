"""The OpenAPI contract, checked from outside: schemathesis with every check against the
running service, with the examples, the bounds on statuses and the warnings that fail the run
set in schemathesis.toml (60 examples per computation operation, 10 elsewhere: about 25 s on
a 2-core machine), and a fixed seed. An operation whose schema-valid bodies are all refused
fails it too (validation_mismatch). Run it by hand with more (`--max-examples 200`)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT, free_port, server_process

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


@pytest.mark.slow
@pytest.mark.skipif(not SCHEMATHESIS.exists() and shutil.which("schemathesis") is None,
                    reason="schemathesis is not installed (the test extra)")
def test_schemathesis_checks_all(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "DYDC_DEVICE": "cpu", "DYDC_ACCESS_LOG": "false", "DYDC_COMPILE": "false"}
    command = [sys.executable, "-m", "app", "--port", str(port), "--log-level", "warning"]
    with server_process(command, env, port) as server:
        done = subprocess.run(
            [str(SCHEMATHESIS) if SCHEMATHESIS.exists() else "schemathesis", "run",
             f"{server.url}/openapi.json", "--checks", "all", "--seed", "20261202",
             "--no-color"],
            cwd=ROOT, env={**os.environ, "HOME": str(tmp_path)}, capture_output=True,
            text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    selected = re.search(r"Selected: (\d+)/(\d+)\s+Tested: (\d+)", done.stdout)
    assert selected and len(set(selected.groups())) == 1, done.stdout[-3000:]  # every operation
    assert "WARNINGS" not in done.stdout, done.stdout[-3000:]
