"""What the tests share, one module per concept; the names are re-exported here, so a test
writes ``from tests.support import assert_problem, scrape, value``. Fixtures stay in
tests/conftest.py; no test module imports another (tests/test_test_layout.py)."""

from __future__ import annotations

from tests.support import closed_forms
from tests.support.builders import GatedBuilder
from tests.support.clients import ClientFactory
from tests.support.closed_forms import CLOSED_FORMS, black_scholes, options
from tests.support.dockerfile import DOCKERFILE, image_env, instructions
from tests.support.engine import (
    AD_RTOL,
    BUILTINS,
    FD_ATOL_SCALE,
    FD_RTOL,
    assert_close,
    assert_matches_closed_form,
    params_of,
    problem_for,
    run_engine,
)
from tests.support.environment import ROOT, needs_cxx
from tests.support.expressions import ESCAPES
from tests.support.logs import access_log_lines
from tests.support.metrics import scrape, value
from tests.support.problems import assert_problem
from tests.support.routes import route_paths
from tests.support.servers import (
    SMALL_LIMITS,
    ServerProcess,
    free_port,
    server_process,
    server_thread,
)
from tests.support.v2 import HEADER, INFER, assert_error, binary_input, frame, tensor, unframe

__all__ = [
    "AD_RTOL",
    "BUILTINS",
    "CLOSED_FORMS",
    "DOCKERFILE",
    "ESCAPES",
    "FD_ATOL_SCALE",
    "FD_RTOL",
    "HEADER",
    "INFER",
    "ROOT",
    "SMALL_LIMITS",
    "ClientFactory",
    "GatedBuilder",
    "ServerProcess",
    "access_log_lines",
    "assert_close",
    "assert_error",
    "assert_matches_closed_form",
    "assert_problem",
    "binary_input",
    "black_scholes",
    "closed_forms",
    "frame",
    "free_port",
    "image_env",
    "instructions",
    "needs_cxx",
    "options",
    "params_of",
    "problem_for",
    "route_paths",
    "run_engine",
    "scrape",
    "server_process",
    "server_thread",
    "tensor",
    "unframe",
    "value",
]
