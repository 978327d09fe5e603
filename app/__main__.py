"""``python -m app`` (or ``dydc``): serve on DYDC_HOST:DYDC_PORT with uvicorn.

``--host``, ``--port`` and ``--log-level`` mirror their ``DYDC_*`` variables (a flag wins
over the variable); every other setting is a variable only. There is no ``--workers``: one
process owns the devices, its queue and its batching (several processes would each claim
every device), so scale out with replicas instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import uvicorn

from app.config import Settings, load_settings

__all__ = ["main", "parse_args"]

_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
_FLAGS = ("host", "port", "log_level")  # each the setting it mirrors


def _help(field: str) -> str:
    info = Settings.model_fields[field]
    return f"{info.description} Sets DYDC_{field.upper()} (default {info.default})."


def _port(text: str) -> int:
    """--port's value: an integer from 0 to 65535 (else a usage error naming the flag)."""
    try:
        port = int(text)
    except ValueError:  # (argparse's own message named this function: "invalid _port value")
        raise argparse.ArgumentTypeError(f"{text!r} is not a port; use 0 to 65535") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port; use 0 to 65535")
    return port


def parse_args(argv: Sequence[str] | None = None,
               prog: str | None = None) -> argparse.Namespace:
    """The flags; an unknown or malformed one ends the process with usage and exit 2.
    ``prog``: the command's name in the usage (default: how it was started)."""
    parser = argparse.ArgumentParser(
        prog=prog or _prog(),
        description="Serve the dydc sensitivity service with uvicorn.",
        epilog="Every other setting is a DYDC_* environment variable (README: Configuration).",
        allow_abbrev=False,
    )
    parser.add_argument("--host", help=_help("host"))
    parser.add_argument("--port", type=_port, help=_help("port"))
    parser.add_argument("--log-level", type=str.lower, choices=_LOG_LEVELS, help=_help("log_level"))
    return parser.parse_args(argv)


def _prog() -> str:
    """``dydc-server`` when started as that script, else ``python -m app``."""
    name = os.path.basename(sys.argv[0]) if sys.argv else ""
    return name if name.startswith("dydc-server") else "python -m app"


def main(argv: Sequence[str] | None = None) -> None:
    """Serve; ``argv`` defaults to the command line (``dydc serve`` passes its own)."""
    args = parse_args(argv)
    for field in _FLAGS:
        value = getattr(args, field)
        if value is not None:  # the app (app.main:app) reads its settings from the variables
            os.environ[f"DYDC_{field.upper()}"] = str(value)
    settings = load_settings()
    # The application answers what is left 503 at the end of DYDC_GRACE_PERIOD_S itself
    # (app.main); uvicorn's own limit, which cancels requests, comes after that.
    uvicorn.run(
        "app.main:app",
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,  # app.http.access_log
        timeout_graceful_shutdown=max(1, round(settings.grace_period_s)) + 5,
    )


if __name__ == "__main__":
    main()
