"""docker-compose.yml, its no-GPU override and the monitoring profile's configuration, checked
without a Docker engine: the Compose Specification's schema, promtool, and the app itself."""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import yaml

import app.__main__
from app.config import Settings
from app.main import create_app
from tests.support import image_env, route_paths

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
COMPOSE = ROOT / "docker-compose.yml"
CPU_OVERRIDE = ROOT / "docker-compose.cpu.yml"
PROMETHEUS_CONFIG = ROOT / "deploy/prometheus/prometheus.yml"
PORT = Settings.model_fields["port"].default


class _Reset:
    """Compose's `!reset` tag: the key goes from the merged file."""


class _ComposeLoader(yaml.SafeLoader):
    pass


_ComposeLoader.add_constructor("!reset", lambda loader, node: _Reset())
_ComposeLoader.add_constructor(
    "!override", lambda loader, node: loader.construct_object(node, deep=True)
    if not isinstance(node, yaml.MappingNode) else loader.construct_mapping(node, deep=True))


def load(path: Path) -> Any:
    return yaml.load(path.read_text(), Loader=_ComposeLoader)  # a SafeLoader, plus two tags


def merge(base: Any, override: Any) -> Any:
    """The part of Compose's merge that docker-compose.cpu.yml uses: mappings merge key by key,
    `!reset` removes, anything else replaces."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            if isinstance(value, _Reset):
                merged.pop(key, None)
            else:
                merged[key] = merge(base.get(key), value)
        return merged
    return override


def plain(data: Any) -> Any:
    """The file as a schema sees it: `!reset` values become empty mappings."""
    if isinstance(data, dict):
        return {k: plain(v) for k, v in data.items()}
    if isinstance(data, list):
        return [plain(v) for v in data]
    return {} if isinstance(data, _Reset) else data


def tool(name: str) -> str:
    found = shutil.which(name, path=str(VENV_BIN)) or shutil.which(name)
    assert found, f"{name} missing: it comes with the test extras in pyproject.toml"
    return found


def drain_seconds() -> float:
    """Longest SIGTERM drain: uvicorn's graceful timeout (what `python -m app` passes it), then
    the worker pool's stop, which the lifespan gives DYDC_GRACE_PERIOD_S again."""
    seen: dict[str, Any] = {}
    mp = pytest.MonkeyPatch()
    with mp.context() as m:
        m.setattr(uvicorn, "run", lambda *a, **kw: seen.update(kw))
        for key in [k for k in os.environ if k.startswith("DYDC_")]:
            m.delenv(key)
        app.__main__.main([])
    assert "grace_period_s" in inspect.getsource(create_app), "the pool's drain changed"
    return float(seen["timeout_graceful_shutdown"]) + Settings().grace_period_s


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, f"write durations as <n>s: {duration}"
    return float(match.group(1))


def test_compose_files_match_the_compose_spec(tmp_path: Path) -> None:
    """The vendored Compose Specification schema, on both files and on their merge."""
    base, override = load(COMPOSE), load(CPU_OVERRIDE)
    files = [COMPOSE]
    for name, data in {"cpu-override.json": plain(override),
                       "merged-cpu.json": merge(base, override)}.items():
        (tmp_path / name).write_text(json.dumps(data))
        files.append(tmp_path / name)
    result = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", *map(str, files)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_service_reserves_gpus_and_checks_readiness() -> None:
    dydc = load(COMPOSE)["services"]["dydc"]
    assert dydc["build"] == "." and "profiles" not in dydc
    assert dydc["environment"]["DYDC_DEVICE"] in {"cuda", "auto"}
    devices = dydc["deploy"]["resources"]["reservations"]["devices"]
    assert devices and all(d["driver"] == "nvidia" and "gpu" in d["capabilities"]
                           for d in devices)
    assert dydc["restart"] == "on-failure"
    assert any(str(p).endswith(f":{PORT}") for p in dydc["ports"])
    test = " ".join(dydc["healthcheck"]["test"])
    assert f"127.0.0.1:{PORT}/readyz" in test and "/readyz" in route_paths()
    assert seconds(dydc["stop_grace_period"]) > drain_seconds()


def test_compiled_graphs_live_on_a_named_volume() -> None:
    compose = load(COMPOSE)
    cache = Path(image_env()["DYDC_COMPILE_CACHE_DIR"])
    mounts = dict(v.split(":")[:2] for v in compose["services"]["dydc"]["volumes"])
    named = {source for source, target in mounts.items() if target == str(cache.parent)}
    assert named and named <= set(compose["volumes"]), mounts


def test_cpu_override_drops_the_gpu_and_changes_nothing_else() -> None:
    base, merged = load(COMPOSE), merge(load(COMPOSE), load(CPU_OVERRIDE))
    dydc = merged["services"]["dydc"]
    assert "deploy" not in dydc
    assert dydc["environment"]["DYDC_DEVICE"] == "cpu"
    for key in set(base["services"]["dydc"]) - {"deploy", "environment"}:
        assert dydc[key] == base["services"]["dydc"][key], key
    assert set(merged["services"]) == set(base["services"])


def test_monitoring_profile_mounts_files_that_exist() -> None:
    services = load(COMPOSE)["services"]
    assert {n for n, s in services.items() if "monitoring" in s.get("profiles", [])} == {
        "prometheus", "grafana"}
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is missing"


def test_every_service_of_every_profile_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Deployment"):]
    if (end := re.search(r"^## ", section[3:], re.MULTILINE)) is not None:
        section = section[:end.start() + 3]
    assert "docker-compose.cpu.yml" in section and "--profile monitoring" in section
    for name in load(COMPOSE)["services"]:
        assert f"`{name}`" in section, f"README's Deployment section does not name `{name}`"


def test_prometheus_scrapes_the_service_metrics() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "dydc")
    assert job["metrics_path"] in route_paths()
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"dydc:{PORT}"]


def test_grafana_datasource_is_the_one_the_dashboard_uses() -> None:
    source = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/dydc.json").read_text())
    uids = {p["datasource"]["uid"] for p in dashboard["panels"]}
    assert uids == {source["datasources"][0]["uid"]}
    assert source["datasources"][0]["url"] == "http://prometheus:9090"


def test_promtool_accepts_the_prometheus_config() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is missing on CI: .ci/run installs Debian's prometheus "
                        "package for it")
        pytest.skip("promtool is missing (apt-get install prometheus)")
    result = subprocess.run([promtool, "check", "config", str(PROMETHEUS_CONFIG)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
