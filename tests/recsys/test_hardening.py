"""The shared server builder against long-lived streams, the artifact's file checks, numeric
feature encoding at the edges of float32, and where the metrics endpoint listens."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
import threading
import time
import warnings

import click
import grpc
import numpy as np
import pytest
from click.testing import CliRunner
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from recsys.artifact import ChecksumError, file_sha256, read_manifest, verify_files
from recsys.cli._options import server_options
from recsys.errors import FailedPrecondition, Unavailable
from recsys.grpc_server import create_server
from recsys.metrics import ServiceMetrics
from recsys.onnx_session import ModelSession
from recsys.schema import FeatureKind, FeatureSpec
from recsys.security import ServerSecurity

# -- long-lived streams ---------------------------------------------------------------------


@contextlib.contextmanager
def idle_streams(target: str, count: int):
    """Opens `count` reflection streams and `count` health Watch streams to `target` and keeps
    them open without sending more; yields the status code each one ended with (OK while it is
    still open and being served), once each has been answered or refused."""
    channel = grpc.insecure_channel(target)
    release = threading.Event()
    outcomes: list[grpc.StatusCode | None] = [None] * (2 * count)
    answered = threading.Semaphore(0)
    calls = []

    def requests():
        yield reflection_pb2.ServerReflectionRequest(list_services="")
        release.wait(30)  # idle: the stream stays open, the server's handler waits for more

    def first_reply(i: int, call) -> None:
        try:
            next(call)
            outcomes[i] = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            outcomes[i] = exc.code()
        answered.release()

    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    threads = []
    for i in range(2 * count):
        if i < count:
            call = reflection.ServerReflectionInfo(requests(), timeout=30)
        else:
            call = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
        calls.append(call)
        thread = threading.Thread(target=first_reply, args=(i, call), daemon=True)
        thread.start()
        threads.append(thread)
    try:
        deadline = time.monotonic() + 5
        for _ in threads:  # a stream queued behind busy workers never answers: stop waiting
            if not answered.acquire(timeout=max(0.0, deadline - time.monotonic())):
                break
        yield outcomes
    finally:
        release.set()
        for call in calls:
            call.cancel()
        for thread in threads:
            thread.join(5)
        channel.close()


def health_check(target: str, timeout: float = 2.0) -> int:
    with grpc.insecure_channel(target) as channel:
        return (
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout).status
        )


@contextlib.contextmanager
def bare_server(**options):
    server, port, health = create_server([], port=0, **options)
    health.set("", health_pb2.HealthCheckResponse.SERVING)
    try:
        yield f"localhost:{port}"
    finally:
        server.stop(None)


def test_idle_reflection_and_watch_streams_leave_workers_for_unary_calls():
    with bare_server(host="127.0.0.1", max_workers=4) as target:
        with idle_streams(target, 4) as outcomes:
            start = time.monotonic()
            assert health_check(target) == health_pb2.HealthCheckResponse.SERVING
            assert time.monotonic() - start < 2.0
            # one stream in four workers (max_workers // 4); the others are refused at once
            assert outcomes.count(grpc.StatusCode.OK) == 1
            assert outcomes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 7
        # closed streams give their slots back
        with idle_streams(target, 1) as outcomes:
            assert outcomes.count(grpc.StatusCode.OK) == 1


def test_stream_budget_can_be_set():
    with bare_server(host="127.0.0.1", max_workers=8, max_streams=3) as target, idle_streams(target, 2) as outcomes:
        assert outcomes.count(grpc.StatusCode.OK) == 3
        assert health_check(target) == health_pb2.HealthCheckResponse.SERVING
    with bare_server(host="127.0.0.1", max_workers=2, max_streams=0) as target, idle_streams(target, 1) as outcomes:
        assert outcomes == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2  # 0: every stream refused
    with pytest.raises(ValueError, match="max_streams"):
        create_server([], host="127.0.0.1", port=0, max_streams=-1)


def list_services(target: str) -> list[str]:
    with grpc.insecure_channel(target) as channel:
        replies = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        return [s.name for reply in replies for s in reply.list_services_response.service]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_reflection_is_on_for_loopback_hosts(host):
    with bare_server(host=host) as target:
        assert "grpc.health.v1.Health" in list_services(target)


def test_reflection_is_off_on_every_interface_unless_asked_for_or_behind_tokens():
    with bare_server(host="[::]") as target:
        with pytest.raises(grpc.RpcError) as info:
            list_services(target)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert health_check(target) == health_pb2.HealthCheckResponse.SERVING  # health stays
    with bare_server(host="[::]", reflection=True) as target:
        assert "grpc.health.v1.Health" in list_services(target)
    with bare_server(host="[::]", security=ServerSecurity(tokens=frozenset({"a-token"}))) as target:
        with pytest.raises(grpc.RpcError) as info:
            list_services(target)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED  # there, but only with a token


# -- the artifact's files -------------------------------------------------------------------


@pytest.fixture
def artifact(trained_artifact, tmp_path):
    copy = tmp_path / "artifact"
    shutil.copytree(trained_artifact, copy)
    return copy


def test_a_trained_artifact_lists_every_file(artifact):
    manifest = read_manifest(artifact)
    on_disk = {p.name for p in artifact.iterdir() if p.is_file() and p.name != "manifest.json"}
    assert set(manifest.files) == on_disk
    verify_files(artifact, manifest)


def test_a_manifest_that_leaves_out_the_model_is_refused(artifact):
    manifest = read_manifest(artifact)
    for name in ("model.onnx", "item_index.json"):
        files = {k: v for k, v in manifest.files.items() if k != name}
        with pytest.raises(FailedPrecondition, match=f"{name} is not listed in its manifest") as info:
            verify_files(artifact, dataclasses.replace(manifest, files=files))
        assert "\n" not in str(info.value)


def test_a_file_the_manifest_does_not_list_is_refused(artifact):
    manifest = read_manifest(artifact)
    (artifact / "model.int8.onnx").write_bytes(b"smuggled")
    with pytest.raises(FailedPrecondition, match="model.int8.onnx is not listed in its manifest"):
        verify_files(artifact, manifest)


def test_a_listed_name_outside_the_artifact_is_refused(artifact, tmp_path):
    manifest = read_manifest(artifact)
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    files = {**manifest.files, "../outside.json": file_sha256(outside)}
    with pytest.raises(FailedPrecondition, match="not a file name inside the artifact"):
        verify_files(artifact, dataclasses.replace(manifest, files=files))


def test_a_changed_file_still_fails_its_checksum(artifact):
    (artifact / "item_index.json").write_text('{"item_ids": []}')
    with pytest.raises(ChecksumError, match="item_index.json does not match its checksum"):
        verify_files(artifact, read_manifest(artifact))


def test_an_onnx_file_that_does_not_parse_is_one_line(artifact):
    (artifact / "model.onnx").write_bytes(b"this is not an ONNX model\n" * 10)
    with pytest.raises(FailedPrecondition) as info:
        ModelSession(artifact, read_manifest(artifact))
    message = str(info.value)
    assert message.startswith(f"artifact {artifact}: model.onnx is not a valid ONNX model: ")
    assert "\n" not in message and len(message) < 400


# -- numbers at the edges of float32 --------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "mean", "std"),
    [(1e30, 0.0, 1e-10), (1e308, 0.0, 1.0), (-1e308, 1e308, 1.0), (3.5e38, 0.0, 1.0), (1e30, 0.0, 10.0)],
)
def test_numbers_too_far_from_the_mean_encode_as_missing(value, mean, std):
    spec = FeatureSpec("x", FeatureKind.NUMERIC, mean=mean, std=std)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no float32 overflow warning either
        encoded = np.float32(spec.encode_numeric(value))
    assert math.isfinite(encoded) and encoded == 0.0


def test_ordinary_and_large_but_plausible_numbers_still_encode():
    spec = FeatureSpec("age", FeatureKind.NUMERIC, mean=30.0, std=10.0)
    assert spec.encode_numeric(50.0) == pytest.approx(2.0)
    assert spec.encode_numeric(30.0 + 10.0 * 1e6) == pytest.approx(1e6)  # at the bound: kept
    assert spec.encode_numeric(None) == 0.0 and spec.encode_numeric(float("nan")) == 0.0


def test_non_finite_model_output_is_a_failed_run():
    from recsys.errors import NonFiniteScores
    from recsys.onnx_session import check_finite

    scores = np.array([[0.5, np.nan, 1.0]], dtype=np.float32)
    with pytest.raises(NonFiniteScores, match="model x gave 1 non-finite value") as info:
        check_finite(scores, "model x")
    assert isinstance(info.value, Unavailable) and info.value.code == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(NonFiniteScores):
        check_finite(np.array([np.inf, -np.inf]), "model x")
    fine = np.array([1.0, -3.0], dtype=np.float32)
    assert check_finite(fine, "model x") is fine
    assert check_finite(np.array([1, 2], dtype=np.int64), "model x").tolist() == [1, 2]  # indices


# -- where metrics listen ---------------------------------------------------------------------


def options_of(*argv: str) -> dict:
    got = {}

    @click.command()
    @server_options(50051)
    def command(server):
        got.update(server)

    result = CliRunner().invoke(command, list(argv))
    assert result.exit_code == 0, result.output
    return got


def test_metrics_listen_where_the_server_listens_unless_told_otherwise():
    assert options_of()["metrics_host"] == "127.0.0.1"  # plaintext, no tokens: loopback by default
    assert options_of("--host", "[::]")["metrics_host"] == "[::]"
    assert options_of("--host", "127.0.0.1", "--metrics-host", "0.0.0.0")["metrics_host"] == "0.0.0.0"


def test_servers_listen_on_loopback_unless_tls_or_tokens_are_on(monkeypatch, tmp_path, capfd):
    monkeypatch.delenv("RECSYS_AUTH_TOKENS", raising=False)
    monkeypatch.delenv("RECSYS_HOST", raising=False)
    assert options_of()["host"] == "127.0.0.1"
    token = tmp_path / "token"
    token.write_text("a-token-of-some-length\n")
    assert options_of("--auth-token-file", str(token))["host"] == "[::]"
    monkeypatch.setenv("RECSYS_HOST", "0.0.0.0")  # what the server images set, as [::]
    from recsys.cli._options import listen_host
    from recsys.security import ServerSecurity

    warned = []
    monkeypatch.setattr("logging.Logger.warning", lambda self, msg, *a: warned.append(msg % a))
    assert options_of()["host"] == "0.0.0.0"
    assert listen_host("[::]", ServerSecurity()) == "[::]"
    assert len(warned) == 2 and "every interface (0.0.0.0) in plaintext without tokens" in warned[0]


def test_both_server_configs_take_the_metrics_host():
    from feature_service.config import FeatureServiceConfig
    from inference_server.config import InferenceConfig

    server = options_of("--host", "127.0.0.1")
    assert FeatureServiceConfig(**server).metrics_host == InferenceConfig(**server).metrics_host == "127.0.0.1"


@pytest.mark.parametrize(("host", "bound"), [("127.0.0.1", "127.0.0.1"), ("[::1]", "::1"), ("[::]", "::")])
def test_metrics_endpoint_binds_the_host_it_is_given(host, bound):
    metrics = ServiceMetrics()
    try:
        port = metrics.serve_http(0, host)
        assert port > 0
        assert metrics._http.server_address[0] == bound
    finally:
        metrics.close()


def test_servers_cap_malloc_arenas_unless_the_environment_says(monkeypatch) -> None:
    """Threaded servers keep a few MiB per glibc arena they touch; `serve` caps them at two."""
    import platform

    from recsys.grpc_server import limit_malloc_arenas

    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert limit_malloc_arenas() is (platform.libc_ver()[0] == "glibc")
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False  # the operator's setting wins
