"""The shipped deployment files are valid and say what the README promises: every
Kubernetes object passes kubernetes-validate (strict), compose.yaml passes the compose
specification's JSON schema, and each keeps the operating rules (drain outlasted by
the grace period, secrets by reference, health checks, real setting names)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, latest_version

from shared.core.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
COMPOSE = ROOT / "compose.yaml"
COMPOSE_SCHEMA = ROOT / "deploy" / "schema" / "compose-spec.json"
# The oldest Kubernetes the manifests promise to fit, and the newest the package knows.
K8S_VERSIONS = ("1.29", latest_version())
DEPLOYER_SECRET_KEYS = {
    "BUILDQ_REDIS_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "BUILDQ_SECRETS_KEY",
}
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|AUTH|REDIS_URL|ACCESS_KEY|SIGNING|CHAT_USERS")
UPLOADER_PRESTOP_S = 5
UVICORN_EXTRA_S = 5  # uploader/__main__.py: timeout_graceful_shutdown = grace + 5


def k8s_docs(name: str = "buildq.yaml") -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    return next(d for d in k8s_docs() if d["kind"] == kind and d["metadata"]["name"] == name)


def pod(deployment: str) -> dict[str, Any]:
    spec: dict[str, Any] = k8s_object("Deployment", deployment)["spec"]["template"]["spec"]
    return spec


def grace_period_s() -> float:
    return float(k8s_object("ConfigMap", "buildq")["data"]["BUILDQ_GRACE_PERIOD_S"])


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return doc


def compose_validator() -> jsonschema.Draft201909Validator:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    jsonschema.Draft201909Validator.check_schema(schema)
    return jsonschema.Draft201909Validator(
        schema, format_checker=jsonschema.Draft201909Validator.FORMAT_CHECKER
    )


def duration_s(text: str) -> float:
    """A compose duration (``1m30s``, ``35s``) in seconds."""
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", text)
    assert text, "empty duration"
    assert parts, f"not a duration: {text!r}"
    hours, minutes, seconds = (float(p) if p else 0.0 for p in parts.groups())
    return hours * 3600 + minutes * 60 + seconds


def setting_names() -> set[str]:
    return {ENV_PREFIX + name.upper() for name in Settings.model_fields}


# --- Kubernetes --------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_kubernetes_object_passes_strict_validation(version: str) -> None:
    docs = k8s_docs()
    kinds = sorted(d["kind"] for d in docs)

    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)

    assert kinds == [
        "ConfigMap",
        "Deployment",
        "Deployment",
        "PodDisruptionBudget",
        "PodDisruptionBudget",
        "Service",
    ]


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("spec", "template", "spec", "terminationGracePeriodSecond"), 40),  # a typo
        (("spec", "replicas"), "two"),  # a wrong type
        (("spec", "template", "spec", "containers", 0, "resources", "requests"), "1Gi"),
    ],
)
def test_a_broken_kubernetes_manifest_is_rejected(path: tuple[str | int, ...], value: Any) -> None:
    broken = copy.deepcopy(k8s_object("Deployment", "buildq-deployer"))
    parent: Any = broken
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value

    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, latest_version(), strict=True)


def test_the_keda_scaledobject_scales_the_deployers_on_an_exported_metric() -> None:
    (scaled,) = k8s_docs("keda-scaledobject.yaml")
    spec = scaled["spec"]
    (trigger,) = spec["triggers"]
    metric = re.fullmatch(r"\w+\((\w+)\)", trigger["metadata"]["query"])
    deployer_env = {
        e["name"]: e.get("value") for e in pod("buildq-deployer")["containers"][0]["env"]
    }

    # kubernetes-validate ships no schema for KEDA's CRD: only the checks below hold it.
    with pytest.raises(SchemaNotFoundError):
        kubernetes_validate.validate(scaled, latest_version(), strict=True)
    assert (scaled["apiVersion"], scaled["kind"]) == ("keda.sh/v1alpha1", "ScaledObject")
    assert spec["scaleTargetRef"]["name"] == "buildq-deployer"
    k8s_object("Deployment", spec["scaleTargetRef"]["name"])  # exists
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert trigger["type"] == "prometheus"
    assert metric is not None, trigger["metadata"]["query"]
    assert f'"{metric.group(1)}"' in (ROOT / "uploader" / "metrics.py").read_text()
    # One replica per BUILDQ_DEPLOYER_SLOTS in-flight jobs.
    assert trigger["metadata"]["threshold"] == deployer_env["BUILDQ_DEPLOYER_SLOTS"]


def test_pods_outlast_their_drain_before_the_kubelet_kills_them() -> None:
    grace = grace_period_s()
    deployer, uploader = pod("buildq-deployer"), pod("buildq-uploader")

    assert deployer["terminationGracePeriodSeconds"] > grace
    # The deployer's drain is its SIGTERM handler: a preStop hook would only eat into it.
    assert "lifecycle" not in deployer["containers"][0]
    prestop = uploader["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert prestop == ["sleep", str(UPLOADER_PRESTOP_S)]
    assert uploader["terminationGracePeriodSeconds"] > (
        UPLOADER_PRESTOP_S + grace + UVICORN_EXTRA_S
    )


def test_upgrades_overlap_old_and_new_pods() -> None:
    for name in ("buildq-deployer", "buildq-uploader"):
        strategy = k8s_object("Deployment", name)["spec"]["strategy"]
        assert strategy["rollingUpdate"]["maxUnavailable"] == 0, name
        assert strategy["rollingUpdate"]["maxSurge"] >= 1, name


def test_kubernetes_secrets_come_by_reference_and_deployers_get_only_theirs() -> None:
    refs: dict[str, set[tuple[str, str]]] = {}
    for name in ("buildq-deployer", "buildq-uploader"):
        container = pod(name)["containers"][0]
        assert all("secretRef" not in s for s in container.get("envFrom", [])), name
        refs[name] = set()
        for env in container["env"]:
            if SECRET_NAME.search(env["name"]):
                assert "value" not in env, f"{name}: {env['name']} is a literal"
                ref = env["valueFrom"]["secretKeyRef"]
                assert ref["key"] == env["name"]
                refs[name].add((ref["name"], ref["key"]))
    configmap = k8s_object("ConfigMap", "buildq")["data"]

    assert {key for _, key in refs["buildq-deployer"]} == DEPLOYER_SECRET_KEYS
    assert ("buildq-secrets", "BUILDQ_API_TOKENS") in refs["buildq-uploader"]
    deployer_secrets = {secret for secret, _ in refs["buildq-deployer"]}
    uploader_secrets = {secret for secret, _ in refs["buildq-uploader"]}
    assert deployer_secrets.isdisjoint(uploader_secrets)
    assert not any(SECRET_NAME.search(key) for key in configmap)


def test_every_container_has_requests_a_memory_limit_and_the_uploader_has_probes() -> None:
    for name in ("buildq-deployer", "buildq-uploader"):
        resources = pod(name)["containers"][0]["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]), name
        assert "memory" in resources["limits"], name
    uploader = pod("buildq-uploader")["containers"][0]

    assert uploader["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert uploader["livenessProbe"]["httpGet"]["path"] == "/healthz"
    api = (ROOT / "uploader" / "api.py").read_text()
    assert '@router.get("/readyz"' in api
    assert '@router.get("/healthz")' in api


def test_the_uploader_pod_runs_as_the_image_user() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    user = re.findall(r"^USER (\S+)$", dockerfile, flags=re.MULTILINE)[-1]
    security = pod("buildq-uploader")["securityContext"]

    assert user.isdigit()  # runAsNonRoot cannot check a user name
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == int(user)


def test_the_deployer_memory_limit_covers_every_build_slot() -> None:
    container = pod("buildq-deployer")["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    limit = container["resources"]["limits"]["memory"]
    limit_mib = int(limit.removesuffix("Mi")) if limit.endswith("Mi") else None

    assert limit_mib is not None, f"write the deployer's limit in Mi: {limit}"
    builds_mib = int(env["BUILDQ_DEPLOYER_SLOTS"]) * int(env["BUILDQ_BUILD_MEMORY_MB"])
    assert limit_mib >= builds_mib + 256


def test_disruption_budgets_select_the_deployments() -> None:
    budgets = [d for d in k8s_docs() if d["kind"] == "PodDisruptionBudget"]

    assert {b["metadata"]["name"] for b in budgets} == {"buildq-deployer", "buildq-uploader"}
    for budget in budgets:
        selector = budget["spec"]["selector"]["matchLabels"]
        labels = k8s_object("Deployment", budget["metadata"]["name"])["spec"]["template"]
        assert selector.items() <= labels["metadata"]["labels"].items()
    deployer_budget = next(b for b in budgets if b["metadata"]["name"] == "buildq-deployer")
    assert "minAvailable" not in deployer_budget["spec"]  # KEDA may leave one replica


def test_kubernetes_env_names_are_real_settings() -> None:
    names = set(k8s_object("ConfigMap", "buildq")["data"])
    for deployment in ("buildq-deployer", "buildq-uploader"):
        names |= {e["name"] for e in pod(deployment)["containers"][0]["env"]}

    unknown = {n for n in names if n.startswith(ENV_PREFIX)} - setting_names()
    assert not unknown  # an unknown BUILDQ_* variable stops the process


# --- compose -----------------------------------------------------------------------


def test_compose_file_passes_the_compose_specification_schema() -> None:
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in compose_validator().iter_errors(compose())
    ]

    assert errors == []


@pytest.mark.parametrize(
    ("service", "key", "value"),
    [
        ("deployer", "stop_grace_perod", "35s"),  # a typo
        ("deployer", "deploy", {"replicas": "two"}),  # a wrong type
        ("valkey", "healthcheck", {"test": ["CMD", "valkey-cli", "ping"], "intervall": "5s"}),
        ("uploader", "depends_on", {"valkey": {"condition": "service_ready"}}),
    ],
)
def test_a_broken_compose_file_is_rejected(service: str, key: str, value: Any) -> None:
    broken = compose()
    broken["services"][service][key] = value

    assert list(compose_validator().iter_errors(broken))


def test_compose_keeps_redis_durable_and_starts_in_order() -> None:
    services = compose()["services"]
    valkey_command = " ".join(services["valkey"]["command"])

    assert "--appendonly yes" in valkey_command
    assert "--maxmemory-policy noeviction" in valkey_command
    assert any(v.startswith("valkey-data:/data") for v in services["valkey"]["volumes"])
    assert any(v.startswith("s3-data:/data") for v in services["s3"]["volumes"])
    assert set(compose()["volumes"]) == {"valkey-data", "s3-data"}
    for name in ("valkey", "s3", "uploader"):
        assert services[name]["healthcheck"]["test"][0] == "CMD", name
    for name in ("uploader", "deployer"):
        depends = services[name]["depends_on"]
        assert depends["valkey"]["condition"] == "service_healthy", name
        assert depends["s3-bucket"]["condition"] == "service_completed_successfully", name
    assert services["s3-bucket"]["depends_on"]["s3"]["condition"] == "service_healthy"
    assert "/readyz" in " ".join(services["uploader"]["healthcheck"]["test"])


def test_compose_deployers_scale_and_outlast_their_drain() -> None:
    deployer = compose()["services"]["deployer"]
    grace = float(deployer["environment"]["BUILDQ_GRACE_PERIOD_S"])

    assert deployer["deploy"]["replicas"] >= 2
    assert duration_s(deployer["stop_grace_period"]) > grace
    assert "container_name" not in deployer  # a fixed name cannot scale


def test_compose_has_no_literal_secret() -> None:
    reference = re.compile(r"\$\{(\w+):[?-][^}]*\}")
    for name, service in compose()["services"].items():
        for key, value in service.get("environment", {}).items():
            if SECRET_NAME.search(key):
                assert reference.search(str(value)), f"{name}: {key} is a literal"
    deployer_env = compose()["services"]["deployer"]["environment"]
    assert {k for k in deployer_env if SECRET_NAME.search(k)} == DEPLOYER_SECRET_KEYS


def test_compose_env_names_are_real_settings() -> None:
    names: set[str] = set()
    for service in compose()["services"].values():
        names |= set(service.get("environment", {}))

    unknown = {n for n in names if n.startswith(ENV_PREFIX)} - setting_names()
    assert not unknown  # an unknown BUILDQ_* variable stops the process
