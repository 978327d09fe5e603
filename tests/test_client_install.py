"""``pip install ./client`` alone, in a fresh virtual environment without the system's
packages: the client imports, and torch is neither installed nor imported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.slow

CHECK = """
import importlib.util, sys
import dydc
assert "torch" not in sys.modules, "importing dydc imported torch"
assert importlib.util.find_spec("torch") is None, "torch is installed"
assert importlib.util.find_spec("typer") is None, "the cli extra was installed"
print(dydc.__version__, sorted(m for m in ("httpx", "numpy") if m in sys.modules))
"""


def test_fresh_venv(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    # Without pip of its own (ensurepip alone took 17 s here): this environment's pip installs
    # into it, resolving httpx and numpy from the package index as any install would.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                              "-q", "--no-compile", str(ROOT / "client")],
                             capture_output=True, text=True)
    assert install.returncode == 0, install.stderr
    run = subprocess.run([str(python), "-c", CHECK], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["0.1.0", "['httpx',", "'numpy']"]
    # The command line without its extra says what to install, in one line.
    cli = subprocess.run([str(venv / "bin" / "dydc"), "routines"], capture_output=True,
                         text=True)
    assert cli.returncode == 1
    assert cli.stderr.strip() == "the dydc command line needs its extra: " \
        "pip install 'dydc-client[cli]'"
