"""Model repository and hot swap: publish versions, serve the newest that passes its checks,
reject broken ones (the old keeps serving), roll back, never fail a request during a swap."""

from __future__ import annotations

import dataclasses
import shutil
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from click.testing import CliRunner
from grpc_health.v1 import health_pb2, health_pb2_grpc

from feature_service.server import create_feature_server
from inference_server.model_repository import ModelManager
from inference_server.repository import ModelRepository
from inference_server.server import start_inference_service
from recsys.artifact import MANIFEST, MODEL, file_sha256, read_manifest
from recsys.cli import main
from recsys.errors import FailedPrecondition, InvalidArgument, NotFound
from recsys.v1 import admin_pb2, admin_pb2_grpc, inference_pb2, inference_pb2_grpc


def not_onnx(artifact: Path, out: Path) -> Path:
    """The artifact with a model file that is not ONNX, its checksum recorded to match."""
    shutil.copytree(artifact, out)
    (out / MODEL).write_bytes(b"this is not an onnx model")
    manifest = read_manifest(out)
    files = {**manifest.files, MODEL: file_sha256(out / MODEL)}
    (out / MANIFEST).write_text(dataclasses.replace(manifest, files=files).to_json())
    return out


def corrupt(repo: ModelRepository, model: str, artifact: Path, work: Path) -> int:
    """Adds `artifact` as the next version with its model file damaged behind the manifest's
    back (as a bad copy would), moved in whole so that the watcher never sees it intact."""
    damaged = work / "damaged"
    shutil.copytree(artifact, damaged)
    (damaged / MODEL).write_bytes((damaged / MODEL).read_bytes()[:100])
    version = (repo.latest(model) or 0) + 1
    damaged.rename(repo.path(model, version))
    return version


def test_publish_numbers_versions_and_skips_what_is_not_one(trained_artifact, tmp_path):
    repo = ModelRepository(tmp_path / "repo")
    assert repo.versions("sasrec") == [] and repo.latest("sasrec") is None
    assert repo.publish(trained_artifact) == 1  # model name from the manifest's kind
    assert repo.publish(trained_artifact, "sasrec") == 2
    (tmp_path / "repo" / "sasrec" / ".publish-leftover").mkdir()
    (tmp_path / "repo" / "sasrec" / "notes").mkdir()
    (tmp_path / "repo" / "sasrec" / "007").mkdir()
    assert repo.versions("sasrec") == [1, 2]
    assert (repo.path("sasrec", 2) / MANIFEST).read_text() == (trained_artifact / MANIFEST).read_text()


def test_publish_races_get_distinct_versions(trained_artifact, tmp_path):
    repo = ModelRepository(tmp_path / "repo")
    got: list[int] = []
    threads = [threading.Thread(target=lambda: got.append(repo.publish(trained_artifact, "m"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == [1, 2, 3, 4] and repo.versions("m") == [1, 2, 3, 4]
    assert not [p for p in (tmp_path / "repo" / "m").iterdir() if p.name.startswith(".")]


def test_publish_refuses_broken_artifacts_and_bad_names(trained_artifact, tmp_path):
    repo = ModelRepository(tmp_path / "repo")
    broken = tmp_path / "broken"
    shutil.copytree(trained_artifact, broken)
    (broken / MODEL).write_bytes(b"not a model")
    with pytest.raises(FailedPrecondition, match="checksum"):
        repo.publish(broken, "m")
    with pytest.raises(FailedPrecondition, match="not a recsys artifact"):
        repo.publish(tmp_path, "m")
    for name in ["../x", "a/b", ".hidden", "x" * 200]:
        with pytest.raises(InvalidArgument):
            repo.publish(trained_artifact, name)
    assert repo.versions("m") == []


def test_cli_publish(trained_artifact, tmp_path):
    result = CliRunner().invoke(
        main, ["publish", "--artifact", str(trained_artifact), "--repo", str(tmp_path / "r"), "--model", "recs"]
    )
    assert result.exit_code == 0, result.output
    assert '"version": 1' in result.output and ModelRepository(tmp_path / "r").versions("recs") == [1]


@pytest.fixture
def features(trained_artifact):
    server, port, _, core = create_feature_server(trained_artifact, "memory://", host="127.0.0.1")
    yield f"127.0.0.1:{port}"
    server.stop(None)
    core.close()


def recommend(port: int, user: str = "u000") -> inference_pb2.RecommendResponse:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return inference_pb2_grpc.InferenceServiceStub(channel).Recommend(
            inference_pb2.RecommendRequest(user_id=user, k=5), timeout=10
        )


def wait_for(predicate, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_hot_swap_reject_rollback_through_the_server(trained_artifact, features, tmp_path):
    repo = ModelRepository(tmp_path / "repo")
    repo.publish(trained_artifact, "m")
    service = start_inference_service(
        None, features, repo=repo.root, model="m", watch_interval_s=0.05, host="127.0.0.1"
    )
    served_version = read_manifest(trained_artifact).model_version
    stop = threading.Event()
    try:
        assert recommend(service.port).model_version == f"m/1:{served_version}"
        # Requests keep flowing during every swap below; none may fail.
        failures: list[BaseException] = []
        seen: set[str] = set()

        def load() -> None:
            while not stop.is_set():
                try:
                    seen.add(recommend(service.port, "u001").model_version)
                except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                    failures.append(exc)

        clients = [threading.Thread(target=load, daemon=True) for _ in range(3)]
        for c in clients:
            c.start()
        repo.publish(trained_artifact, "m")
        wait_for(lambda: service.manager.current.version == 2)
        assert recommend(service.port).model_version == f"m/2:{served_version}"

        bad = corrupt(repo, "m", trained_artifact, tmp_path)  # version 3: checksum fails
        wait_for(lambda: bad in service.manager.rejected)
        assert "checksum" in service.manager.rejected[bad]
        other = repo.publish(not_onnx(trained_artifact, tmp_path / "other"), "m")  # version 4: no model
        wait_for(lambda: other in service.manager.rejected)
        assert "onnx" in service.manager.rejected[other].lower()
        time.sleep(0.3)  # a few more watch rounds: rejected versions are not retried
        assert service.manager.current.version == 2
        stop.set()
        for c in clients:
            c.join()
        assert not failures
        assert seen <= {f"m/1:{served_version}", f"m/2:{served_version}"} and f"m/2:{served_version}" in seen

        with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            admin = admin_pb2_grpc.AdminServiceStub(channel)
            status = admin.GetModelStatus(admin_pb2.GetModelStatusRequest(), timeout=10)
            assert (status.model, status.policy, status.serving_version) == ("m", "latest", 2)
            assert list(status.versions) == [1, 2, 3, 4]
            assert {r.version for r in status.rejected} == {3, 4}

            back = admin.RollbackModel(admin_pb2.RollbackModelRequest(), timeout=30)
            assert back.serving_version == 1 and back.model_version == f"m/1:{served_version}"
            assert recommend(service.port).model_version == f"m/1:{served_version}"
            repo.publish(trained_artifact, "m")  # version 5: pinned to 1, so not picked up
            time.sleep(0.3)
            assert service.manager.current.version == 1

            with pytest.raises(grpc.RpcError) as info:
                admin.LoadModelVersion(admin_pb2.LoadModelVersionRequest(version=3), timeout=30)
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "checksum" in info.value.details()
            with pytest.raises(grpc.RpcError) as info:
                admin.LoadModelVersion(admin_pb2.LoadModelVersionRequest(version=99), timeout=30)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            assert service.manager.current.version == 1

            latest = admin.LoadModelVersion(admin_pb2.LoadModelVersionRequest(version=0), timeout=30)
            assert latest.serving_version == 5
        assert recommend(service.port).model_version == f"m/5:{served_version}"
        server = ["--server", f"127.0.0.1:{service.port}"]
        result = CliRunner().invoke(main, ["model", "rollback", *server])
        assert result.exit_code == 0 and '"servingVersion": "1"' in result.output, result.output
        result = CliRunner().invoke(main, ["model", "status", *server])
        assert result.exit_code == 0 and '"policy": "pinned"' in result.output, result.output
        result = CliRunner().invoke(main, ["model", "load", "3", *server])
        assert result.exit_code != 0 and "FAILED_PRECONDITION" in result.output
    finally:
        stop.set()  # the load threads end even when an assertion above failed
        service.stop()


def test_newest_passing_version_serves_at_start_and_nan_models_are_rejected(trained_artifact, features, tmp_path):
    from inference_server.feature_client import FeatureClient
    from inference_server.server import _stage

    repo = ModelRepository(tmp_path / "repo")
    for _ in range(3):
        repo.publish(trained_artifact, "m")
    client = FeatureClient(features)

    def build(path: Path):
        recommender = _stage(path, client, device="cpu", threads=1, max_k=50)
        if path.name == "3":  # this version's model answers NaN
            real = recommender.session.scores
            recommender.session.scores = lambda x: np.full_like(real(x), np.nan)
        return recommender

    try:
        manager = ModelManager(build, client, repository=repo, model="m")
        assert manager.current.version == 2 and "non-finite" in manager.rejected[3]
        with pytest.raises(FailedPrecondition, match="nothing to roll back"):
            manager.rollback()
        with pytest.raises(InvalidArgument):
            manager.load_version(-1)
        with pytest.raises(NotFound):
            ModelManager(build, client, repository=repo, model="m", version=7)
        pinned = ModelManager(build, client, repository=repo, model="m", version=1)
        assert pinned.current.version == 1 and pinned.poll() is None and pinned.policy == "pinned"
    finally:
        client.close()


def test_an_empty_repository_waits_not_serving_until_its_first_version(trained_artifact, features, tmp_path):
    repo = ModelRepository(tmp_path / "repo")
    (tmp_path / "repo").mkdir()
    service = start_inference_service(
        None, features, repo=repo.root, model="m", watch_interval_s=0.05, health_interval_s=0.05, host="127.0.0.1"
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            check = health_pb2.HealthCheckRequest(service="recsys.v1.InferenceService")
            assert health.Check(check, timeout=5).status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError) as info:
                recommend(service.port)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "no version" in info.value.details()
            status = admin_pb2_grpc.AdminServiceStub(channel).GetModelStatus(admin_pb2.GetModelStatusRequest())
            assert (status.serving_version, list(status.versions)) == (0, [])
            repo.publish(trained_artifact, "m")
            wait_for(lambda: health.Check(check, timeout=5).status == health_pb2.HealthCheckResponse.SERVING)
            assert recommend(service.port).model_version.startswith("m/1:")
    finally:
        service.stop()
