"""deploy/gpu-check.sh, read without Docker or a GPU: the allowances it gives the containers it
starts by hand are Compose's, read from docker-compose.yml by the script's own function."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support import ROOT

GPU_CHECK = ROOT / "deploy/gpu-check.sh"
COMPOSE = ROOT / "docker-compose.yml"


def seconds(duration: str) -> int:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, f"write durations as <n>s: {duration}"
    return int(match.group(1))


def step(title: str) -> str:
    """The script's text from `step "<title>..."` to the next step."""
    script = GPU_CHECK.read_text()
    start = script.index(f'step "{title}')
    end = script.find('\nstep "', start + 1)
    return script[start:end if end >= 0 else None]


def compose_seconds(key: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """The script's own compose_seconds, run by bash in ``cwd``."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    function = re.search(r"^compose_seconds\(\) \{\n.*?^\}\n", GPU_CHECK.read_text(),
                         re.MULTILINE | re.DOTALL)
    assert function, "gpu-check.sh reads no duration from docker-compose.yml (compose_seconds)"
    script = f'set -euo pipefail\n{function.group()}compose_seconds "$1"\n'
    return subprocess.run([bash, "-c", script, "-", key], cwd=cwd,
                          capture_output=True, text=True, timeout=30)


def test_script_reads_compose_durations() -> None:
    dydc = yaml.safe_load(COMPOSE.read_text())["services"]["dydc"]
    for key, duration in [("start_period", dydc["healthcheck"]["start_period"]),
                          ("stop_grace_period", dydc["stop_grace_period"])]:
        result = compose_seconds(key)
        assert result.returncode == 0, result.stderr
        assert int(result.stdout) == seconds(duration), key


def test_image_alone_waits_for_readiness_as_long_as_compose_allows() -> None:
    """The image alone has no volume, so it builds every compiled graph before /readyz turns
    200: the cold warm-up that Compose's healthcheck allows start_period for."""
    alone = step("the image alone")
    wait = re.search(r'^(\w+)="\$\(compose_seconds start_period\)"$', alone, re.MULTILINE)
    assert wait, "the image alone's readiness wait is not Compose's start_period"
    assert re.search(rf"deadline=\$\(\(SECONDS \+ {wait.group(1)}\)\)", alone)
    loop = alone[alone.index("deadline="):]
    assert "/readyz" in loop.split("done", 1)[0] and '-ge "$deadline"' in loop
    assert re.search(r"for _ in \$\(seq \d+\); do\n\s+curl[^\n]*/readyz", alone) is None, (
        "a fixed-count /readyz loop is left")
    stop = re.search(r'^(\w+)="\$\(compose_seconds stop_grace_period\)"$', alone, re.MULTILINE)
    assert stop and f'docker stop -t "${stop.group(1)}"' in alone


def test_script_stops_when_compose_has_no_such_duration(tmp_path: Path) -> None:
    (tmp_path / "docker-compose.yml").write_text("services:\n  dydc:\n    image: x\n")
    result = compose_seconds("start_period", tmp_path)
    assert result.returncode != 0 and result.stdout == ""
    assert "no start_period" in result.stderr
