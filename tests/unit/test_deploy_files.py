"""The shipped deployment files keep the security model: deployers get no API or chat
secrets, the image can run the bwrap sandbox, compose exposes nothing beyond loopback."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
UPLOADER_SECRETS = ("BUILDQ_API_TOKENS", "BUILDQ_SLACK_SIGNING_SECRET", "BUILDQ_MATTERMOST_TOKEN")


def test_the_image_installs_bubblewrap() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()

    assert "bubblewrap" in dockerfile


def test_compose_deployers_get_only_redis_and_s3_and_ports_stay_on_loopback() -> None:
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]

    deployer_env = services["deployer"]["environment"]
    assert not any(name in deployer_env for name in UPLOADER_SECRETS)
    assert "BUILDQ_API_TOKENS" in services["uploader"]["environment"]  # 0.0.0.0 needs them
    for service in services.values():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), port


def test_kubernetes_deployers_read_no_uploader_secret() -> None:
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "buildq.yaml").read_text()))
    deployments = {d["metadata"]["name"]: d for d in docs if d and d.get("kind") == "Deployment"}

    def secret_env(name: str) -> set[str]:
        """The variables a Deployment's containers read from secrets (by reference)."""
        containers = deployments[name]["spec"]["template"]["spec"]["containers"]
        return {
            e["name"]
            for c in containers
            for e in c.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})
        }

    deployer, uploader = secret_env("buildq-deployer"), secret_env("buildq-uploader")
    assert deployer, "the deployer reads its secrets by reference"
    assert uploader, "the uploader reads its secrets by reference"
    assert not deployer & set(UPLOADER_SECRETS)
    assert set(UPLOADER_SECRETS) & uploader
    configmap = next(d for d in docs if d and d["kind"] == "ConfigMap")
    assert not any(name in configmap["data"] for name in UPLOADER_SECRETS)
