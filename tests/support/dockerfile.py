"""The Dockerfile read as the image's build reads it: its instructions, stage by stage, and
the environment its runtime stage sets."""

from __future__ import annotations

import re
import shlex

from tests.support.environment import ROOT

__all__ = ["DOCKERFILE", "image_env", "instructions"]

DOCKERFILE = ROOT / "Dockerfile"


def instructions(stage: str | None = None) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined; only those of
    the stage named ``stage`` when given (``FROM ... AS stage``)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out: list[tuple[str, str]] = []
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            current = rest.split()[-1] if " AS " in rest.upper() else None
        if stage is None or current == stage:
            out.append((word, rest.strip()))
    return out


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in instructions("runtime"):
        if word == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env[key] = value
    return env
