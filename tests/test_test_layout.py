"""The suite's own shape (issue 21): test modules share helpers through tests/support, never by
importing one another or conftest.py, whose fixtures pytest hands to every test anyway."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def forbidden_imports(source: str) -> list[str]:
    """The modules ``source`` imports that are test modules (``test_*``) or conftest, under
    any spelling: ``import test_x``, ``from tests.test_x import y``, ``from tests import
    test_x``, ``from . import conftest``, inside a function too."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if any(p.startswith("test_") or p == "conftest" for p in parts):
                found.append(name)
                break
    return found


def test_the_check_sees_every_spelling() -> None:
    bad = ["import test_routines", "from test_routines import assert_close",
           "from tests.test_operations import scrape", "from tests import test_v2_binary",
           "from tests.conftest import ClientFactory", "from . import conftest",
           "def f():\n    from tests.test_deploy_image import image_env\n"]
    for source in bad:
        assert forbidden_imports(source), source
    good = ["import tests.support", "from tests.support import assert_problem",
            "from tests.support.metrics import scrape", "import testing", "from app import x"]
    for source in good:
        assert forbidden_imports(source) == [], source


def test_no_test_module_imports_another_or_conftest() -> None:
    modules = [*TESTS.glob("test_*.py"), *TESTS.glob("support/*.py"), TESTS / "conftest.py"]
    offenders = {str(path.relative_to(TESTS)): names for path in sorted(modules)
                 if (names := forbidden_imports(path.read_text()))}
    assert offenders == {}, "move shared helpers into tests/support/ and import them there"
