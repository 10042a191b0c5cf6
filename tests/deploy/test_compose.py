"""Compose smoke test: `make up` runs docker/compose.yaml (Redis, a trainer job on small
generated data, the feature service, the inference server), Recommend is answered through
the published port, and `make down` leaves no container, network or volume of the project.

Needs a Docker daemon, Compose and the images from `make docker`. Without them it skips,
unless RECSYS_REQUIRE_DOCKER=1 (CI), which turns the skip into a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from recsys.client import RecommendError, free_port, recommend

ROOT = Path(__file__).resolve().parents[2]
DOCKER_REQUIRED = os.environ.get("RECSYS_REQUIRE_DOCKER") == "1"
TAG = os.environ.get("RECSYS_TAG", "latest")
IMAGES = [f"recsys/{name}:{TAG}" for name in ("feature-service", "inference-server", "trainer")]
UP_TIMEOUT_S = 600  # training 3 epochs in a container plus ONNX export, on 2 busy cores


def _run(*cmd: str, env=None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT, check=False)


def _missing() -> str | None:
    """Why the stack cannot run here, or None."""
    if not shutil.which("docker"):
        return "no docker client"
    if _run("docker", "info").returncode != 0:
        return "no Docker daemon answering"
    if _run("docker", "compose", "version").returncode != 0 and not shutil.which("docker-compose"):
        return "no Docker Compose"
    redis = os.environ.get("REDIS_IMAGE", "redis:7.2-bookworm")
    absent = [i for i in [*IMAGES, redis] if _run("docker", "image", "inspect", i).returncode != 0]
    if absent:
        return f"images missing ({', '.join(absent)}): run `make docker` (OFFLINE=1 without a registry)"
    return None


@pytest.fixture(scope="module")
def docker_ready():
    reason = _missing()
    if reason:
        if DOCKER_REQUIRED:
            pytest.fail(f"{reason}, and RECSYS_REQUIRE_DOCKER=1 requires the compose smoke test to run")
        pytest.skip(reason)


def _leftovers(project: str) -> dict[str, list[str]]:
    label = f"label=com.docker.compose.project={project}"
    return {
        kind: _run("docker", *cmd, "--filter", label).stdout.split()
        for kind, cmd in {
            "containers": ("ps", "-aq"),
            "networks": ("network", "ls", "-q"),
            "volumes": ("volume", "ls", "-q"),
        }.items()
    }


@pytest.mark.parametrize("image", ["feature-service", "inference-server"])
def test_serving_images_carry_no_torch_and_run_unprivileged(docker_ready, image):
    probe = (
        "import importlib.util as u, os, sys; sys.exit(0 if u.find_spec('torch') is None and os.getuid() != 0 else 1)"
    )
    run = _run("docker", "run", "--rm", "--entrypoint", "/opt/recsys/bin/python", f"recsys/{image}:{TAG}", "-c", probe)
    assert run.returncode == 0, run.stderr[-2000:]


def test_stack_answers_recommend_then_goes_away(docker_ready, ring_data, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("interactions", "users", "items"):
        shutil.copy(ring_data[name], data / f"{name}.csv")
        (data / f"{name}.csv").chmod(0o644)
    data.chmod(0o755)  # the containers run as an unprivileged user
    port = free_port()
    project = f"recsys-smoke-{os.getpid()}"
    env = {
        **os.environ,
        "COMPOSE_PROJECT_NAME": project,
        "RECSYS_DATA": str(data),
        "RECSYS_EPOCHS": "3",
        "RECSYS_INFERENCE_PORT": str(port),
        "RECSYS_TAG": TAG,
    }
    try:
        up = _run("make", "up", env=env, timeout=UP_TIMEOUT_S)
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-3000:]
        deadline, last = time.monotonic() + UP_TIMEOUT_S, None
        response = None
        while time.monotonic() < deadline:
            try:
                response = recommend(f"127.0.0.1:{port}", "u000", 5, timeout_s=5)
                break
            except RecommendError as exc:
                last = exc
                time.sleep(2)
        assert response is not None, f"no answer through port {port}: {last}\n{_compose_logs(env)}"
        assert len(response.items) == 5
        assert response.model_version
        assert len({item.item_id for item in response.items}) == 5
    finally:
        down = _run("make", "down", env=env, timeout=180)
    assert down.returncode == 0, down.stderr[-3000:]
    assert _leftovers(project) == {"containers": [], "networks": [], "volumes": []}


def _compose_logs(env) -> str:
    cmd = ["docker-compose"] if shutil.which("docker-compose") else ["docker", "compose"]
    out = _run(*cmd, "-f", "docker/compose.yaml", "logs", "--no-color", "--tail", "40", env=env)
    return out.stdout[-6000:] + out.stderr[-2000:]
