"""``python -m app``'s flags: each mirrors its DYDC_* variable (and wins over it), --help
starts nothing, an unknown or malformed flag is a usage error (exit 2). The contract test
(tests/test_contract.py) serves with ``--port``."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import uvicorn

import app.__main__ as entry
from app.config import Settings
from app.main import create_app
from tests.support import ROOT


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What ``main`` hands uvicorn, with uvicorn not started; DYDC_* restored after."""
    seen: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: seen.update(kw))
    for key in ("DYDC_HOST", "DYDC_PORT", "DYDC_LOG_LEVEL"):
        monkeypatch.setenv(key, "")  # recorded, so that what main sets is undone after
        monkeypatch.delenv(key)
    return seen


def test_flags_set_host_port_and_log_level(served: dict[str, Any]) -> None:
    entry.main(["--host", "0.0.0.0", "--port", "8312", "--log-level", "WARNING"])
    assert (served["host"], served["port"], served["log_level"]) == ("0.0.0.0", 8312, "warning")


def test_a_flag_wins_over_its_variable(
    served: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DYDC_PORT", "9001")
    monkeypatch.setenv("DYDC_HOST", "127.0.0.2")
    entry.main(["--port", "8312"])
    assert (served["host"], served["port"]) == ("127.0.0.2", 8312)


def test_no_flags_keep_the_defaults(served: dict[str, Any]) -> None:
    entry.main([])
    assert (served["host"], served["port"], served["log_level"]) == ("127.0.0.1", 8000, "info")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--port", "eighty"], "argument --port: 'eighty' is not a port; use 0 to 65535"),
        (["--port", "-1"], "argument --port: -1 is not a port; use 0 to 65535"),
        (["--port", "65536"], "argument --port: 65536 is not a port; use 0 to 65535"),
        (["--log-level", "loud"], "argument --log-level: invalid choice: 'loud'"),
        (["--workers", "4"], "unrecognized arguments: --workers 4"),
    ],
)
def test_usage_errors_exit_2(
    served: dict[str, Any], argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        entry.main(argv)
    assert exit_.value.code == 2 and not served
    assert message in capsys.readouterr().err


def test_help_starts_nothing() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "app", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m app")
    for flag, variable in (
        ("--host", "DYDC_HOST"),
        ("--port", "DYDC_PORT"),
        ("--log-level", "DYDC_LOG_LEVEL"),
    ):
        assert flag in done.stdout and variable in done.stdout
    # the installed script's usage names the script (it said "python -m app")
    script = Path(sys.executable).parent / "dydc-server"
    done = subprocess.run([str(script), "--port", "x"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("usage: dydc-server"), done.stderr


def test_the_log_level_reaches_the_services_own_loggers(monkeypatch: pytest.MonkeyPatch) -> None:
    """DYDC_LOG_LEVEL sets the ``app`` loggers (their lines never showed under
    ``uvicorn app.main:app``, which configures only its own); given explicitly, uvicorn's
    own loggers too, and left to its default, theirs are left as uvicorn set them."""
    for name in ("app", "uvicorn", "uvicorn.error"):
        monkeypatch.setattr(logging.getLogger(name), "level", logging.getLogger(name).level)
    logging.getLogger("uvicorn").setLevel(logging.INFO)
    create_app(Settings())
    assert logging.getLogger("app.main").getEffectiveLevel() == logging.INFO
    assert logging.getLogger("uvicorn").level == logging.INFO
    create_app(Settings(log_level="error"))  # type: ignore[call-arg]
    assert logging.getLogger("app.engine").getEffectiveLevel() == logging.ERROR
    assert logging.getLogger("uvicorn.error").getEffectiveLevel() == logging.ERROR
