"""The inference server checks what its model reads against the feature contract the feature
service serves: a store that lacks a feature the model reads is NOT_SERVING and
FAILED_PRECONDITION with a message saying what to do; a store that holds more (another model's
vocabulary, extra features) serves it; SERVING follows the feature service."""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from feature_service.server import create_feature_server
from inference_server.server import create_inference_server
from recsys.artifact import MANIFEST, read_manifest
from recsys.errors import FailedPrecondition
from recsys.schema import FeatureContract, FeatureKind
from recsys.v1 import inference_pb2, inference_pb2_grpc

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


def other_schema_artifact(trained_artifact: Path, tmp_path: Path) -> Path:
    """The same artifact whose schema differs in one detail (a retrained vocabulary, say)."""
    copy = tmp_path / "other"
    shutil.copytree(trained_artifact, copy)
    manifest = read_manifest(copy)
    schema = dataclasses.replace(manifest.schema, extra={"vocabulary_version": 2})
    (copy / MANIFEST).write_text(dataclasses.replace(manifest, schema=schema).to_json())
    return copy


def without_user_features(trained_artifact: Path, tmp_path: Path) -> Path:
    """The artifact with no user features at all: a store loaded from it serves none."""
    copy = tmp_path / "no-users"
    shutil.copytree(trained_artifact, copy)
    manifest = read_manifest(copy)
    schema = dataclasses.replace(manifest.schema, user_features=())
    (copy / MANIFEST).write_text(dataclasses.replace(manifest, schema=schema).to_json())
    (copy / "users.jsonl").write_text("")
    return copy


def health_of(port: int) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        request = health_pb2.HealthCheckRequest(service="recsys.v1.InferenceService")
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status


def wait_health(port: int, status: int, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while health_of(port) != status:
        assert time.monotonic() < deadline, f"health not {status} after {timeout_s} s"
        time.sleep(0.02)


def test_a_store_without_a_read_feature_is_not_serving_and_failed_precondition(
    ranker_artifact: Path, trained_artifact: Path, tmp_path: Path
) -> None:
    store_side = without_user_features(trained_artifact, tmp_path)
    fserver, fport, _, fcore = create_feature_server(store_side, "memory://", host="127.0.0.1")
    iserver, iport, _, recommender = create_inference_server(ranker_artifact, f"127.0.0.1:{fport}", host="127.0.0.1")
    try:
        assert health_of(iport) == NOT_SERVING
        with grpc.insecure_channel(f"127.0.0.1:{iport}") as channel, pytest.raises(grpc.RpcError) as info:
            inference_pb2_grpc.InferenceServiceStub(channel).Recommend(
                inference_pb2.RecommendRequest(user_id="u000", k=5), timeout=5
            )
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        details = info.value.details()
        assert "cannot feed this model: user feature 'age' (numeric) is not served" in details
        assert "recsys features load" in details
    finally:
        iserver.stop(None)
        fserver.stop(None)
        recommender.features.close()
        fcore.close()


def test_a_store_loaded_by_another_version_serves_this_one(trained_artifact: Path, tmp_path: Path) -> None:
    other = other_schema_artifact(trained_artifact, tmp_path)
    fserver, fport, _, fcore = create_feature_server(other, "memory://", host="127.0.0.1")
    iserver, iport, _, recommender = create_inference_server(trained_artifact, f"127.0.0.1:{fport}", host="127.0.0.1")
    try:
        assert health_of(iport) == SERVING
        with grpc.insecure_channel(f"127.0.0.1:{iport}") as channel:
            reply = inference_pb2_grpc.InferenceServiceStub(channel).Recommend(
                inference_pb2.RecommendRequest(user_id="u000", k=5), timeout=5
            )
        assert reply.source == inference_pb2.SOURCE_MODEL and len(reply.items) == 5
    finally:
        iserver.stop(None)
        fserver.stop(None)
        recommender.features.close()
        fcore.close()


def test_serving_follows_the_feature_service(trained_artifact: Path, tmp_path: Path) -> None:
    """Without degradation; with it, test_degradation.py checks the dependency's own entry."""
    # The feature service is not up yet: NOT_SERVING; it comes up on that port: SERVING.
    fserver, fport, _, fcore = create_feature_server(trained_artifact, "memory://", host="127.0.0.1")
    fserver.stop(None).wait()
    fcore.close()
    iserver, iport, _, recommender = create_inference_server(
        trained_artifact, f"127.0.0.1:{fport}", host="127.0.0.1", health_interval_s=0.05, degrade=False
    )
    try:
        assert health_of(iport) == NOT_SERVING
        fserver, _, _, fcore = create_feature_server(trained_artifact, "memory://", host="127.0.0.1", port=fport)
        wait_health(iport, SERVING)
        fserver.stop(None).wait()
        fcore.close()
        wait_health(iport, NOT_SERVING)
    finally:
        iserver.stop(None)
        recommender.features.close()


def test_feature_client_reads_users_and_items(trained_artifact: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from inference_server import feature_client
    from inference_server.feature_client import FeatureClient

    fserver, fport, _, fcore = create_feature_server(trained_artifact, "memory://", host="127.0.0.1")
    client = FeatureClient(f"127.0.0.1:{fport}")
    try:
        user = client.get_user("u000", 5)
        assert user.found and len(user.history) == 5 and set(user.features) == {"age", "gender"}
        assert not client.get_user("nobody", 5).found
        monkeypatch.setattr(feature_client, "ITEM_BATCH", 3)  # several calls
        items = client.get_items(["m00", "nope", "m01", "m02", "m03"])
        assert list(items) == ["m00", "m01", "m02", "m03"] and items["m01"]["title"] == "Movie 1"
        assert client.contract_of(fcore.contract_hash) == fcore.contract
        with pytest.raises(FailedPrecondition, match="user feature 'zip' .* is not served"):
            client.check_compatible(FeatureContract(user={"zip": FeatureKind.CATEGORICAL}))
    finally:
        client.close()
        fserver.stop(None)
        fcore.close()
