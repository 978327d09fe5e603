"""OpenMP's threads sleep between parallel loops (app/__init__.py): set before torch is
imported, unless the operator set it."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support import ROOT

_PROBE = ("import app, os, sys; assert 'torch' not in sys.modules; "
          "print(os.environ['OMP_WAIT_POLICY'])")


def _policy(env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_openmp_threads_wait_asleep_unless_the_operator_says() -> None:
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert _policy(base) == "PASSIVE"
    assert _policy({**base, "OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"
