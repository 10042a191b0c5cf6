"""docker/k8s manifests: valid against Kubernetes' own JSON schemas (shipped in the
kubernetes-validate wheel, so this runs offline), strict about unknown fields, and consistent
with each other and with the servers (probes, ports, selectors, the autoscaler's target)."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

K8S = Path(__file__).resolve().parents[2] / "docker" / "k8s"
VERSIONS = ["1.30.0", "1.37.0"]  # the oldest Kubernetes we claim and the newest schemas shipped
PORTS = {"feature-service": 50051, "inference-server": 50052}
SERVICES = {"feature-service": "recsys.v1.FeatureService", "inference-server": "recsys.v1.InferenceService"}


def manifests() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":  # kustomize's own file, not a cluster resource
            continue
        docs += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def by_kind(kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for _, doc in manifests() if doc["kind"] == kind}


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_is_valid_and_strict(version):
    docs = manifests()
    assert len(docs) >= 10
    for _name, doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)  # raises ValidationError


def test_the_validator_rejects_a_broken_manifest():
    deployment = by_kind("Deployment")["inference-server"]
    broken = {**deployment, "spec": {**deployment["spec"], "replicas": "two"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)
    typo = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, VERSIONS[-1], strict=True)


def test_kustomization_lists_every_file():
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


@pytest.mark.parametrize("name", sorted(PORTS))
def test_servers_have_grpc_probes_resources_and_run_unprivileged(name):
    deployment = by_kind("Deployment")[name]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    port = PORTS[name]
    assert {"name": "grpc", "containerPort": port} in container["ports"]
    for probe in ("startupProbe", "readinessProbe"):
        assert container[probe]["grpc"] == {"port": port, "service": SERVICES[name]}
    assert container["livenessProbe"]["grpc"]["port"] == port
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][bound])
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert f"{port}" in container["args"]
    # every $(VAR) in the arguments comes from the ConfigMap
    config = by_kind("ConfigMap")["recsys-config"]["data"]
    wanted = {a[2:-1] for a in container["args"] if a.startswith("$(")}
    assert wanted <= set(config), wanted - set(config)


def test_services_select_their_pods_and_hpa_targets_the_inference_deployment():
    deployments = by_kind("Deployment") | by_kind("StatefulSet")
    for name, service in by_kind("Service").items():
        selector = service["spec"]["selector"]
        targets = [
            d for d in deployments.values() if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert targets, f"Service {name} selects no pods"
    hpa = by_kind("HorizontalPodAutoscaler")["inference-server"]
    target = hpa["spec"]["scaleTargetRef"]
    assert target["kind"] == "Deployment" and target["name"] in by_kind("Deployment")
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    # CPU utilisation is a share of the request: without one the HPA cannot act
    assert by_kind("Deployment")[target["name"]]["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"][
        "cpu"
    ]


def test_mounted_secrets_and_claims_exist():
    secrets, claims = by_kind("Secret"), by_kind("PersistentVolumeClaim")
    for _, doc in manifests():
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        for volume in doc["spec"]["template"]["spec"].get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
