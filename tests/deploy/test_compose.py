"""Compose smoke test: `make up` runs docker/compose.yaml (Redis, a trainer job on small
generated data, the feature service, the inference server), Recommend is answered through
the port published on 127.0.0.1; then a second day of data (more events, new items, new users)
is written and `run --rm trainer` retrains, and while a client keeps asking, the inference
server canaries version 2 and promotes it with no failed request; `make down` leaves no
container, network or volume of the project. A second, lighter test brings the stack up with
docker/compose.tls.yaml added (certificates from `recsys.devcerts`, a token): Recommend over TLS
with the token is answered, without it refused as UNAUTHENTICATED.

Needs a Docker daemon, Compose and the images from `make docker`. Without them it skips,
unless RECSYS_REQUIRE_DOCKER=1 (CI), which turns the skip into a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from recsys.cli import main
from recsys.client import RecommendError, RecsysClient, free_port, recommend
from recsys.errors import RecsysError, Unauthenticated
from recsys.v1 import inference_pb2, inference_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
DOCKER_REQUIRED = os.environ.get("RECSYS_REQUIRE_DOCKER") == "1"
TAG = os.environ.get("RECSYS_TAG", "latest")
IMAGES = [f"recsys/{name}:{TAG}" for name in ("feature-service", "inference-server", "trainer")]
CONTAINER_UID = 10001  # the images' unprivileged user
UP_TIMEOUT_S = 600  # training 3 epochs in a container plus ONNX export, on 2 busy cores
PROMOTE_TIMEOUT_S = 120  # from the second training's end to version 2 answering everyone
NEW_ITEMS = 8
NEW_USERS = 4


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


def test_stack_answers_then_retrains_to_version_2_with_no_failed_request(docker_ready, ring_data, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("interactions", "users", "items"):
        shutil.copy(ring_data[name], data / f"{name}.csv")
        (data / f"{name}.csv").chmod(0o644)
    data.chmod(0o755)  # the containers run as an unprivileged user
    port = free_port()
    target = f"127.0.0.1:{port}"
    project = f"recsys-smoke-{os.getpid()}"
    env = {
        # the compose file's defaults are under test: none of the caller's settings leak in
        **{name: value for name, value in os.environ.items() if not name.startswith("RECSYS_")},
        "COMPOSE_PROJECT_NAME": project,
        "RECSYS_DATA": str(data),
        "RECSYS_EPOCHS": "3",
        "RECSYS_INFERENCE_PORT": str(port),
        "RECSYS_TAG": TAG,
        # a quarter of the users see version 2 first; promoted 3 s in (with the limits' 20 answers)
        "RECSYS_CANARY": "0.25",
        "RECSYS_PROMOTE_AFTER": "3",
    }
    users = sorted(pd.read_csv(data / "users.csv", dtype={"user_id": str})["user_id"])
    client = None
    try:
        up = _run("make", "up", env=env, timeout=UP_TIMEOUT_S)
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-3000:]
        first = _first_answer(target, env)
        assert len(first.items) == 5
        assert len({item.item_id for item in first.items}) == 5
        assert first.model_version.startswith("recs/1:"), first.model_version
        # published on the loopback address only: the port asks for no token
        published = _run(*_compose(), "-f", "docker/compose.yaml", "port", "inference", "50052", env=env)
        assert published.stdout.strip() == target, published.stdout + published.stderr

        client = Client(target, users)
        client.start()
        new = write_day_two(data)
        retrain = _run(*_compose(), "-f", "docker/compose.yaml", "run", "--rm", "-T", "trainer", env=env, timeout=600)
        assert retrain.returncode == 0, retrain.stdout[-3000:] + retrain.stderr[-3000:]
        assert '"version": 2' in retrain.stdout, retrain.stdout[-3000:]
        # promoted: a whole round of users, not only the canary's quarter, gets version 2
        deadline = time.monotonic() + PROMOTE_TIMEOUT_S
        while not client.everyone_on("recs/2:"):
            assert time.monotonic() < deadline, f"version 2 not promoted: {client.summary()}\n{_compose_logs(env)}"
            time.sleep(0.5)
        client.finish()
        assert client.failures == [], client.summary()
        assert client.answers > len(users), client.summary()
        assert {v.split(":")[0] for v in client.versions} == {"recs/1", "recs/2"}, client.summary()
        assert all(n == 5 for n in client.sizes), client.summary()

        shown = CliRunner().invoke(main, ["model", "status", "--server", target])
        assert shown.exit_code == 0, shown.output
        status = json.loads(shown.output)
        assert status["servingVersion"] == "2" and status["versions"] == ["1", "2"], status
        assert status["rejected"] == [], status
        assert status["rollout"]["mode"] == "canary" and status["rollout"]["state"] == "promoted", status
        # a day-2 user whose history is day-2 items is served by version 2, which knows them
        reply = recommend(target, new["users"][0], 5, timeout_s=5)
        assert reply.model_version.startswith("recs/2:") and len(reply.items) == 5
        scored = _score(target, new["users"][0], new["items"])
        assert scored.model_version.startswith("recs/2:")
        assert list(scored.unknown_item_ids) == [], "version 2 must know every day-2 item"
        assert np.isfinite(scored.scores).all()
    finally:
        if client is not None:
            client.finish()
        down = _run("make", "down", env=env, timeout=180)
    assert down.returncode == 0, down.stderr[-3000:]
    assert _leftovers(project) == {"containers": [], "networks": [], "volumes": []}


def test_tls_stack_answers_with_the_token_and_refuses_without_it(docker_ready, ring_data, tmp_path):
    """docker/compose.yaml + docker/compose.tls.yaml as docs/deployment.md sets them up."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("interactions", "users", "items"):
        shutil.copy(ring_data[name], data / f"{name}.csv")
        (data / f"{name}.csv").chmod(0o644)
    data.chmod(0o755)
    certs = tmp_path / "certs"
    made = _run(sys.executable, "-m", "recsys.devcerts", "--out", str(certs), "--host", "features")
    assert made.returncode == 0, made.stdout + made.stderr
    certs.chmod(0o755)
    for secret in ("server.key", "token"):  # readable by the containers' user
        if os.geteuid() == 0:
            os.chown(certs / secret, CONTAINER_UID, -1)
        else:  # cannot give files away: a throwaway key, readable by all
            (certs / secret).chmod(0o644)
    token = (certs / "token").read_text().strip()
    port = free_port()
    target = f"127.0.0.1:{port}"
    project = f"recsys-tls-{os.getpid()}"
    env = {
        **{name: value for name, value in os.environ.items() if not name.startswith("RECSYS_")},
        "COMPOSE_PROJECT_NAME": project,
        "RECSYS_DATA": str(data),
        "RECSYS_CERTS": str(certs),
        "RECSYS_EPOCHS": "1",
        "RECSYS_INFERENCE_PORT": str(port),
        "RECSYS_FEATURES_METRICS_PORT": str(free_port()),
        "RECSYS_INFERENCE_METRICS_PORT": str(free_port()),
        "RECSYS_TAG": TAG,
    }
    files = ["-f", "docker/compose.yaml", "-f", "docker/compose.tls.yaml"]
    try:
        up = _run(*_compose(), *files, "up", "-d", env=env, timeout=UP_TIMEOUT_S)
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-3000:]
        with RecsysClient(target, tls_ca=str(certs / "ca.crt"), token=token, retries=0) as client:
            deadline, last = time.monotonic() + UP_TIMEOUT_S, None
            while True:
                try:
                    reply = client.recommend("u000", 5)
                    break
                except RecsysError as exc:
                    last = exc
                    assert time.monotonic() < deadline, f"no answer over TLS: {last}\n{_compose_logs(env, files)}"
                    time.sleep(1)
            assert len(reply.items) == 5, reply
            assert reply.model_version.startswith("recs/1:"), reply.model_version
            # health checks over TLS passed: both servers report healthy to the daemon
            for service in ("features", "inference"):
                assert _health(env, files, service) == "healthy", _compose_logs(env, files)
        with RecsysClient(target, tls_ca=str(certs / "ca.crt"), retries=0) as anonymous, pytest.raises(Unauthenticated):
            anonymous.recommend("u000", 5)
        # and plaintext is not served at all
        with pytest.raises(RecommendError):
            recommend(target, "u000", 5, timeout_s=3)
    finally:
        down = _run(
            *_compose(), *files, "down", "--volumes", "--remove-orphans", "--timeout", "20", env=env, timeout=180
        )
    assert down.returncode == 0, down.stderr[-3000:]
    assert _leftovers(project) == {"containers": [], "networks": [], "volumes": []}


def _health(env, files: list[str], service: str) -> str:
    deadline = time.monotonic() + 60
    while True:
        ids = _run(*_compose(), *files, "ps", "-q", service, env=env).stdout.split()
        state = ""
        if ids:
            state = _run("docker", "inspect", "--format", "{{.State.Health.Status}}", ids[0]).stdout.strip()
        if state == "healthy" or time.monotonic() > deadline:
            return state
        time.sleep(1)


def write_day_two(data: Path, *, seed: int = 1) -> dict[str, list[str]]:
    """Grows the tables in `data` by a day: every user's walk goes on past day 1 (a fifth of
    them onto new items), NEW_USERS new users walk the NEW_ITEMS new items, and users.csv and
    items.csv get the new rows. Returns the new user and item ids."""
    rng = np.random.default_rng(seed)
    events = pd.read_csv(data / "interactions.csv", dtype={"user_id": str, "item_id": str})
    items = pd.read_csv(data / "items.csv", dtype={"item_id": str})
    users = pd.read_csv(data / "users.csv", dtype={"user_id": str})
    new_items = [f"m{len(items) + i:02d}" for i in range(NEW_ITEMS)]
    new_users = [f"w{u:03d}" for u in range(NEW_USERS)]
    t = int(events["timestamp"].max()) + 86_400  # the next day
    rows = []
    last = events.sort_values("timestamp", kind="stable").groupby("user_id")["item_id"].last()
    ring = list(items["item_id"])
    for user, item in last.items():
        walk = new_items if rng.random() < 0.2 else ring
        start = walk.index(item) + 1 if item in walk else int(rng.integers(0, len(walk)))
        for step in range(3):
            t += int(rng.integers(1, 100))
            rows.append((user, walk[(start + step) % len(walk)], t, float(rng.integers(1, 6))))
    for user in new_users:
        start = int(rng.integers(0, NEW_ITEMS))
        for step in range(10):
            t += int(rng.integers(1, 100))
            rows.append((user, new_items[(start + step) % NEW_ITEMS], t, float(rng.integers(1, 6))))
    day_two = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "rating"])
    pd.concat([events, day_two]).to_csv(data / "interactions.csv", index=False)
    new_item_rows = pd.DataFrame(
        {"item_id": new_items, "title": [f"New movie {i}" for i in range(NEW_ITEMS)], "genres": "Drama"}
    )
    pd.concat([items, new_item_rows]).to_csv(data / "items.csv", index=False)
    new_user_rows = pd.DataFrame({"user_id": new_users, "age": 30, "gender": "F"})
    pd.concat([users, new_user_rows]).to_csv(data / "users.csv", index=False)
    return {"users": new_users, "items": new_items}


class Client(threading.Thread):
    """Asks Recommend for each user in turn, over one channel, until finished; keeps every
    failure, and the version and size of every answer."""

    def __init__(self, target: str, users: list[str]) -> None:
        super().__init__(daemon=True)
        self.channel = grpc.insecure_channel(target)
        self.stub = inference_pb2_grpc.InferenceServiceStub(self.channel)
        self.users = users
        self.stop = threading.Event()
        self.failures: list[str] = []
        self.versions: list[str] = []
        self.sizes: list[int] = []
        self.degraded = 0

    @property
    def answers(self) -> int:
        return len(self.versions)

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            request = inference_pb2.RecommendRequest(user_id=self.users[n % len(self.users)], k=5)
            try:
                reply = self.stub.Recommend(request, timeout=5)
                self.versions.append(reply.model_version)
                self.sizes.append(len({item.item_id for item in reply.items}))
                self.degraded += reply.degraded
            except grpc.RpcError as exc:
                self.failures.append(f"{exc.code().name}: {exc.details()}")
            n += 1
            time.sleep(0.005)

    def everyone_on(self, prefix: str) -> bool:
        """The last round of answers, one per user, all came from `prefix`."""
        last = self.versions[-len(self.users) :]
        return len(last) == len(self.users) and all(v.startswith(prefix) for v in last)

    def summary(self) -> str:
        seen = {v: self.versions.count(v) for v in dict.fromkeys(self.versions)}
        return f"{self.answers} answers {seen}, {self.degraded} degraded, failures {self.failures[:5]}"

    def finish(self) -> None:
        if not self.stop.is_set():
            self.stop.set()
            self.join(10)
            self.channel.close()


def _first_answer(target: str, env) -> inference_pb2.RecommendResponse:
    deadline, last = time.monotonic() + UP_TIMEOUT_S, None
    while time.monotonic() < deadline:
        try:
            return recommend(target, "u000", 5, timeout_s=5)
        except RecommendError as exc:
            last = exc
            time.sleep(2)
    pytest.fail(f"no answer through {target}: {last}\n{_compose_logs(env)}")


def _score(target: str, user: str, item_ids: list[str]) -> inference_pb2.ScoreResponse:
    with grpc.insecure_channel(target) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        return stub.Score(inference_pb2.ScoreRequest(user_id=user, item_ids=item_ids), timeout=5)


def _compose() -> list[str]:
    """Compose as the Makefile picks it: the docker plugin, else docker-compose."""
    return ["docker", "compose"] if _run("docker", "compose", "version").returncode == 0 else ["docker-compose"]


def _compose_logs(env, files: list[str] | None = None) -> str:
    files = files or ["-f", "docker/compose.yaml"]
    out = _run(*_compose(), *files, "logs", "--no-color", "--tail", "40", env=env)
    return out.stdout[-6000:] + out.stderr[-2000:]
