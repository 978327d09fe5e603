"""The OpenAPI contract, checked from outside: schemathesis with every check against the
running service (what it may not infer from the schema is in schemathesis.toml). A bounded
number of examples per operation keeps it within the suite's time; run it by hand with more
(`--max-examples 200`)."""

from __future__ import annotations

import os
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
    env = {**os.environ, "DYDC_PORT": str(port), "DYDC_DEVICE": "cpu", "DYDC_ACCESS_LOG": "false",
           "DYDC_COMPILE": "false"}
    with server_process([sys.executable, "-m", "app"], env, port) as server:
        done = subprocess.run(
            [str(SCHEMATHESIS) if SCHEMATHESIS.exists() else "schemathesis", "run",
             f"{server.url}/openapi.json", "--checks", "all", "--max-examples", "4",
             "--seed", "20261202", "--no-color"],
            cwd=ROOT, env={**os.environ, "HOME": str(tmp_path)}, capture_output=True,
            text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "Tested: 21" in done.stdout, done.stdout[-3000:]
