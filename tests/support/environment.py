"""Where the repository is, and what the machine running the tests has."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

__all__ = ["ROOT", "needs_cxx"]

ROOT = Path(__file__).resolve().parent.parent.parent

# Inductor compiles C++ on the CPU; without a compiler the service runs forward mode eagerly
# (tested), and the tests of compiled graphs skip.
needs_cxx = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "g++")) is None,
    reason="compiled forward mode needs a C++ compiler (g++: apt-get install g++)")
