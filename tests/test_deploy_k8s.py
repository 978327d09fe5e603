"""The Kubernetes manifests (deploy/k8s) and the KServe InferenceService (deploy/kserve):
validated offline against Kubernetes' own schemas, and checked against the app's routes,
settings and metrics."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate.utils as kv
import pytest
import yaml
from prometheus_client import REGISTRY

import app.metrics  # noqa: F401 (declares the metrics in REGISTRY)
from app.config import Settings
from tests.support import image_env, route_paths

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy/k8s"
KSERVE = ROOT / "deploy/kserve/inferenceservice.yaml"
COMPOSE = ROOT / "docker-compose.yml"
# The oldest Kubernetes these manifests promise to work on; validation is strict (no unknown
# fields), against that version's schemas, bundled with kubernetes-validate.
KUBERNETES_VERSION = "1.30.0"
PORT = Settings.model_fields["port"].default
PRESTOP_AND_MARGIN_S = 10
# Environment variables of the KServe predictor that KServe reads, not the app.
KSERVE_ENV = frozenset({"PROTOCOL"})


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def manifests() -> dict[str, dict[str, Any]]:
    """kind -> manifest, for every Kubernetes resource under deploy/k8s."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in documents(path):
            if doc["kind"] != "Kustomization":
                assert doc["kind"] not in found, f"two {doc['kind']}s"
                found[doc["kind"]] = doc
    return found


def validate(resource: dict[str, Any]) -> None:
    try:
        kv.validate(resource, KUBERNETES_VERSION, strict=True)
    except kv.ValidationError as e:
        where = ".".join(str(p) for p in e.path)
        pytest.fail(f"{resource['kind']}/{resource['metadata']['name']}: {where}: {e.message}")


def as_pod(spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"}, "spec": spec}


def seconds(duration: str) -> int:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, f"write durations as <n>s: {duration}"
    return int(match.group(1))


def probe_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    return int(next(p["containerPort"] for p in container["ports"] if p.get("name") == port))


def check_container(container: dict[str, Any], platform_env: frozenset[str] = frozenset()) -> None:
    """Probes on the app's own endpoints and port; a GPU asked for; every variable one of the
    app's settings, or one of ``platform_env``, which the platform reads instead."""
    paths = route_paths()
    assert [p["containerPort"] for p in container["ports"]] == [PORT]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for name in ("startupProbe", "livenessProbe", "readinessProbe"):
        if name in container:
            get = container[name]["httpGet"]
            assert get["path"] in paths, f"{name} on {get['path']}, which the app does not serve"
            assert probe_port(container, get["port"]) == PORT, name
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    env = {e["name"]: e["value"] for e in container["env"] if e["name"] not in platform_env}
    assert set(env) <= {f"DYDC_{n.upper()}" for n in Settings.model_fields}, env
    Settings(**{k.removeprefix("DYDC_").lower(): v for k, v in env.items()})


def check_compile_cache_volume(pod: dict[str, Any]) -> None:
    """DYDC_COMPILE_CACHE_DIR (the container's, or the image's) on an emptyDir of the pod (the
    reasoning is in deployment.yaml): it outlives container restarts, which then load the
    graphs instead of building them."""
    (container,) = pod["containers"]
    env = image_env() | {e["name"]: e["value"] for e in container["env"]}
    assert env["DYDC_COMPILE"] == "true" and env["DYDC_COMPILE_WARMUP"] == "true"
    cache = env["DYDC_COMPILE_CACHE_DIR"]
    mount = next((m for m in container.get("volumeMounts", [])
                  if cache.startswith(m["mountPath"] + "/")), None)
    assert mount, f"no volume mounted above DYDC_COMPILE_CACHE_DIR={cache}"
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert "emptyDir" in volume


def test_compiled_graphs_live_on_a_volume_of_the_pod() -> None:
    check_compile_cache_volume(manifests()["Deployment"]["spec"]["template"]["spec"])


def test_manifests_validate_against_the_kubernetes_schemas() -> None:
    found = manifests()
    assert set(found) == {"Deployment", "Service", "PodDisruptionBudget",
                          "HorizontalPodAutoscaler", "ConfigMap"}
    for resource in found.values():
        validate(resource)


def test_kustomization_lists_every_dydc_manifest() -> None:
    listed = set(documents(K8S / "kustomization.yaml")[0]["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


def test_deployment_probes_ports_and_gpu_match_the_app() -> None:
    deployment = manifests()["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    check_container(container)
    assert pod["securityContext"]["runAsNonRoot"] is True
    grace = Settings().grace_period_s
    # uvicorn's graceful timeout, then the worker pool's drain, each DYDC_GRACE_PERIOD_S.
    assert pod["terminationGracePeriodSeconds"] >= 2 * grace + PRESTOP_AND_MARGIN_S


def test_service_and_disruption_budget_select_the_pods() -> None:
    found = manifests()
    labels = found["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert found["Deployment"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert found["Service"]["spec"]["selector"].items() <= labels.items()
    assert found["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (port,) = found["Service"]["spec"]["ports"]
    (container,) = found["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert probe_port(container, port["targetPort"]) == PORT


def test_autoscaler_metric_comes_from_the_adapter_rule_and_the_app() -> None:
    found = manifests()
    hpa = found["HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == found["Deployment"]["metadata"]["name"]
    (metric,) = hpa["spec"]["metrics"]
    name = metric["pods"]["metric"]["name"]
    (rule,) = yaml.safe_load(found["ConfigMap"]["data"]["config.yaml"])["rules"]
    assert rule["name"]["as"] == name
    series = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", rule["seriesQuery"])
    assert series and series.group() in {m.name for m in REGISTRY.collect()}, (
        f"{rule['seriesQuery']}: the app exports no such metric")
    assert re.fullmatch(rule["name"]["matches"], series.group())
    assert {"namespace", "pod"} <= set(rule["resources"]["overrides"])


def predictor() -> dict[str, Any]:
    (isvc,) = documents(KSERVE)
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    return dict(isvc["spec"]["predictor"])


def test_inference_service_runs_the_image_as_a_custom_predictor() -> None:
    spec = predictor()
    # A custom predictor's pod fields are a plain Kubernetes PodSpec, inlined.
    validate(as_pod({k: spec[k] for k in ("containers", "volumes") if k in spec}))
    (container,) = spec["containers"]
    check_container(container, platform_env=KSERVE_ENV)
    deployment_image = manifests()["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == deployment_image["image"]


def test_inference_service_declares_the_open_inference_protocol() -> None:
    """A custom predictor declares its protocol in its container's PROTOCOL variable (KServe's
    CustomPredictor.GetProtocol); the app serves it."""
    (container,) = predictor()["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env.get("PROTOCOL") == "v2", "the predictor does not declare protocol v2"
    assert {"/v2/health/ready", "/v2/models/{name}/infer"} <= route_paths()


def test_inference_service_keeps_compiled_graphs_and_waits_for_the_cold_warm_up() -> None:
    """The cache on a volume, as in the Deployment; a startup probe before liveness; and a
    progress deadline above the cold warm-up that Compose allows (its start_period)."""
    spec = predictor()
    check_compile_cache_volume(spec)
    (container,) = spec["containers"]
    startup = container.get("startupProbe")
    assert startup, "no startupProbe: liveness would start during torch's import"
    assert startup["httpGet"]["path"] == "/healthz"
    warm_up_s = seconds(yaml.safe_load(COMPOSE.read_text())
                        ["services"]["dydc"]["healthcheck"]["start_period"])
    deadline = spec.get("annotations", {}).get("serving.knative.dev/progress-deadline")
    assert deadline, "Knative's default progress deadline (600 s) is below the cold warm-up"
    startup_s = startup["periodSeconds"] * startup["failureThreshold"]
    assert seconds(deadline) >= max(warm_up_s, startup_s), (deadline, warm_up_s, startup_s)
