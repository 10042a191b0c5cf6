"""The images' health check (`recsys-health`, written by each server Dockerfile) works with TLS
on: run here against a real server over TLS, and plaintext through `recsys health`; the compose
files publish metrics on loopback only and turn TLS on for both servers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from recsys.devcerts import make_certs
from recsys.grpc_server import create_server, set_serving
from recsys.security import ServerSecurity, ServerTls

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
SERVER_IMAGES = ["feature-service", "inference-server", "inference-server-cuda"]


def health_script(dockerfile: Path) -> str:
    """The script the Dockerfile's `RUN printf '%s\\n' ... > /opt/recsys/bin/recsys-health` writes."""
    text = dockerfile.read_text()
    (block,) = re.findall(r"RUN printf '%s\\n' \\\n(.*?)\n  > /opt/recsys/bin/recsys-health", text, re.S)
    return "\n".join(re.fullmatch(r"\s*'(.*)' \\", line).group(1) for line in block.splitlines()) + "\n"


@pytest.mark.parametrize("image", SERVER_IMAGES)
def test_every_server_image_checks_its_health_with_the_wrapper(image):
    text = (DOCKER / f"{image}.Dockerfile").read_text()
    assert health_script(DOCKER / f"{image}.Dockerfile") == health_script(DOCKER / "feature-service.Dockerfile")
    (check,) = re.findall(r"HEALTHCHECK .*\\\n\s*CMD (\[.*\])", text)
    assert yaml.safe_load(check)[0] == "recsys-health"


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    certs = make_certs(tmp_path_factory.mktemp("certs"))
    security = ServerSecurity(tls=ServerTls(certs["server.crt"], certs["server.key"]))
    server, port, health = create_server([], host="127.0.0.1", port=0, security=security)
    yield port, health, certs
    server.stop(None)


def _check(script: Path, port: int, env: dict[str, str]) -> subprocess.CompletedProcess:
    bin_dir = str(Path(sys.executable).parent)  # `recsys`, for the plaintext path
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", **env}
    return subprocess.run(
        [sys.executable, str(script), f"localhost:{port}"], env=env, capture_output=True, text=True, timeout=60
    )


def test_the_health_script_speaks_tls_when_given_a_ca(tls_server, tmp_path):
    port, health, certs = tls_server
    script = tmp_path / "recsys-health"
    script.write_text(health_script(DOCKER / "feature-service.Dockerfile"))
    with_ca = {"RECSYS_HEALTH_TLS_CA": str(certs["ca.crt"])}
    set_serving(health, [], serving=False)
    assert _check(script, port, with_ca).returncode == 1
    set_serving(health, [], serving=True)
    answer = _check(script, port, with_ca)
    assert answer.returncode == 0 and "SERVING" in answer.stdout, answer.stderr
    # a name the certificate does not hold fails; the one it holds passes
    assert _check(script, port, {**with_ca, "RECSYS_HEALTH_TLS_NAME": "elsewhere"}).returncode != 0
    assert _check(script, port, {**with_ca, "RECSYS_HEALTH_TLS_NAME": "localhost"}).returncode == 0
    # without a CA it is `recsys health`, plaintext, which a TLS port refuses
    assert _check(script, port, {}).returncode != 0


def test_the_health_script_without_a_ca_is_recsys_health(tmp_path):
    server, port, health = create_server([], host="127.0.0.1", port=0)
    try:
        script = tmp_path / "recsys-health"
        script.write_text(health_script(DOCKER / "inference-server.Dockerfile"))
        set_serving(health, [], serving=True)
        assert _check(script, port, {}).returncode == 0
    finally:
        server.stop(None)


def _compose(name: str) -> dict:
    return yaml.safe_load((DOCKER / name).read_text())


def test_compose_publishes_metrics_on_loopback_only():
    services = _compose("compose.yaml")["services"]
    for name in ("features", "inference"):
        command = services[name]["command"]
        assert command[command.index("--metrics-port") + 1] == "9090"
        metrics = [p for p in services[name]["ports"] if p.endswith(":9090")]
        assert len(metrics) == 1 and metrics[0].startswith("127.0.0.1:")


def test_the_compose_tls_file_turns_tls_and_tokens_on_for_both_servers():
    base, tls = _compose("compose.yaml")["services"], _compose("compose.tls.yaml")["services"]
    for name in ("features", "inference"):
        command = tls[name]["command"]
        for flag in ("--tls-cert", "--tls-key", "--auth-token-file"):
            assert command[command.index(flag) + 1].startswith("/certs/")
        assert tls[name]["environment"]["RECSYS_HEALTH_TLS_CA"] == "/certs/ca.crt"
        assert any(v.endswith(":/certs:ro") for v in tls[name]["volumes"])
        # the rest of the command is the base file's (a command in an override replaces it whole)
        plain = base[name]["command"]
        assert set(plain) <= set(command)
    inference = tls["inference"]["command"]
    assert inference[inference.index("--features-tls-ca") + 1] == "/certs/ca.crt"
    assert inference[inference.index("--features-token-file") + 1].startswith("/certs/")
