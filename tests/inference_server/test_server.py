"""Both services on real servers bound to port 0, over real channels, with a trained artifact."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from click.testing import CliRunner
from grpc_health.v1 import health_pb2, health_pb2_grpc

from feature_service.server import create_feature_server
from inference_server.config import InferenceConfig
from inference_server.server import create_inference_server, start_server
from recsys.v1 import features_pb2, features_pb2_grpc, inference_pb2, inference_pb2_grpc, types_pb2


@pytest.fixture
def services(trained_artifact):
    fserver, fport, _, fcore = create_feature_server(trained_artifact, "memory://")
    iserver, iport, _, recommender = create_inference_server(trained_artifact, f"localhost:{fport}", max_k=50)
    ichannel = grpc.insecure_channel(f"localhost:{iport}")
    fchannel = grpc.insecure_channel(f"localhost:{fport}")
    yield {
        "infer": inference_pb2_grpc.InferenceServiceStub(ichannel),
        "features": features_pb2_grpc.FeatureServiceStub(fchannel),
        "health": health_pb2_grpc.HealthStub(ichannel),
        "feature_server": fserver,
        "recommender": recommender,
    }
    ichannel.close()
    fchannel.close()
    iserver.stop(None)
    fserver.stop(None)
    recommender.features.close()
    fcore.close()


def recommend(stub, user_id, k=10, exclude_seen=True):
    return stub.Recommend(inference_pb2.RecommendRequest(user_id=user_id, k=k, exclude_seen=exclude_seen), timeout=5)


def history_of(services, user_id):
    reply = services["features"].GetUserFeatures(
        features_pb2.GetUserFeaturesRequest(user_ids=[user_id], max_history=1000), timeout=5
    )
    return list(reply.users[0].history)


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def test_health_serving_once_loaded(services):
    reply = services["health"].Check(health_pb2.HealthCheckRequest(service="recsys.v1.InferenceService"), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_recommend_known_user_ranks_by_model_and_drops_seen(services):
    seen = set(history_of(services, "u000"))
    reply = recommend(services["infer"], "u000", k=10)
    assert reply.source == inference_pb2.SOURCE_MODEL
    assert reply.model_version.startswith("sasrec-")
    ids = [i.item_id for i in reply.items]
    assert len(ids) == 10 and len(set(ids)) == 10
    assert not seen & set(ids)
    scores = [i.score for i in reply.items]
    assert scores == sorted(scores, reverse=True)
    assert all(i.title.startswith("Movie ") for i in reply.items)

    with_seen = recommend(services["infer"], "u000", k=40, exclude_seen=False)
    assert len(with_seen.items) == 40  # the whole catalogue, seen items included


def test_score_matches_recommend_and_keeps_request_order(services):
    top = recommend(services["infer"], "u001", k=5, exclude_seen=False).items
    ids = [i.item_id for i in reversed(top)]
    reply = services["infer"].Score(inference_pb2.ScoreRequest(user_id="u001", item_ids=ids), timeout=5)
    assert reply.scores == pytest.approx([i.score for i in reversed(top)], abs=1e-6)
    assert reply.model_version == services["recommender"].model_version


def test_recorded_event_changes_next_recommendation(services):
    before = recommend(services["infer"], "u002", k=5)
    top = before.items[0].item_id
    services["features"].RecordInteractions(
        features_pb2.RecordInteractionsRequest(
            interactions=[types_pb2.Interaction(user_id="u002", item_id=top, timestamp=2_000_000_000)]
        ),
        timeout=5,
    )
    after = recommend(services["infer"], "u002", k=5)
    assert top not in [i.item_id for i in after.items]  # now seen, so excluded
    assert [i.item_id for i in after.items] != [i.item_id for i in before.items]


def test_unknown_user_gets_popularity_flagged(services):
    reply = recommend(services["infer"], "someone-new", k=3)
    assert reply.source == inference_pb2.SOURCE_POPULARITY
    index = services["recommender"].index
    assert [i.item_id for i in reply.items] == list(index.item_ids[:3])  # most popular first


@pytest.mark.parametrize(
    ("request_", "fragment"),
    [
        (inference_pb2.RecommendRequest(user_id="", k=10), "user_id is empty"),
        (inference_pb2.RecommendRequest(user_id="u000", k=0), "k must be between 1 and 50"),
        (inference_pb2.RecommendRequest(user_id="u000", k=-3), "k must be between 1 and 50"),
        (inference_pb2.RecommendRequest(user_id="u000", k=51), "k must be between 1 and 50"),
        (inference_pb2.RecommendRequest(user_id="x" * 300, k=5), "longer than 256"),
    ],
)
def test_bad_recommend_requests_are_invalid_argument(services, request_, fragment):
    error = code_of(lambda: services["infer"].Recommend(request_, timeout=5))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in error.details()


def test_score_names_unknown_items(services):
    """Items the model never saw (newer than it, or none at all) rank last and are named: a
    retrain with new items never turns a client's Score into an error."""
    reply = services["infer"].Score(
        inference_pb2.ScoreRequest(user_id="u000", item_ids=["m01", "nope", "m02", "also-nope"]), timeout=5
    )
    assert list(reply.unknown_item_ids) == ["nope", "also-nope"]
    assert reply.scores[1] == reply.scores[3] == float("-inf") and np.isfinite([reply.scores[0], reply.scores[2]]).all()
    empty = code_of(lambda: services["infer"].Score(inference_pb2.ScoreRequest(user_id="u000"), timeout=5))
    assert empty.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_feature_service_down_is_unavailable_with_a_clear_message(services, trained_artifact):
    """Without degradation (see test_degradation.py for the default, degraded answers)."""
    iserver, iport, _, recommender = create_inference_server(
        trained_artifact, services["recommender"].features.target, degrade=False
    )
    services["feature_server"].stop(None).wait()
    try:
        with grpc.insecure_channel(f"localhost:{iport}") as channel:
            error = code_of(lambda: recommend(inference_pb2_grpc.InferenceServiceStub(channel), "u000"))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert "feature service" in error.details()
    finally:
        iserver.stop(None)
        recommender.features.close()


def test_start_server_takes_one_config(services, trained_artifact):
    config = InferenceConfig(
        artifact_dir=trained_artifact,
        features_target=services["recommender"].features.target,
        host="127.0.0.1",
        port=0,
        max_k=5,
    )
    service = start_server(config)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            assert len(recommend(stub, "u000", k=5).items) == 5
            assert code_of(lambda: recommend(stub, "u000", k=6)).code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        service.stop()


def test_a_config_names_one_model_source():
    with pytest.raises(ValueError, match="not both"):
        InferenceConfig().check()
    with pytest.raises(ValueError, match="not both"):
        InferenceConfig(artifact_dir="a", repo="r", model="m").check()
    with pytest.raises(ValueError, match="needs a model name"):
        InferenceConfig(repo="r").check()
    InferenceConfig(repo="r", model="m", version=2).check()


def test_serve_inference_hands_the_server_one_config(trained_artifact, monkeypatch):
    import inference_server.server
    from inference_server.speed import SpeedOptions
    from recsys.cli import main
    from recsys.onnx_session import SessionTuning
    from recsys.security import ClientSecurity, ServerSecurity

    configs = []
    monkeypatch.setattr(inference_server.server, "serve", configs.append)
    for name in ("RECSYS_AUTH_TOKENS", "RECSYS_FEATURES_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # the command sets them if unset
        monkeypatch.setenv(name, "1")
    result = CliRunner().invoke(
        main,
        [
            "serve",
            "inference",
            "--artifact",
            str(trained_artifact),
            "--features",
            "127.0.0.1:1",
            "--port",
            "0",
            "--threads",
            "2",
            "--batch-max",
            "4",
            "--max-message-mb",
            "2",
            "--no-degrade",
            "--candidates",
            "50",
            "--graph-opt",
            "basic",
            "--spin",
            "--variant",
            "int8",
            "--ann",
            "off",
        ],
    )
    assert result.exit_code == 0, result.output
    tuning = SessionTuning(graph_opt="basic", intra_threads=2, spinning=True)
    assert configs == [
        InferenceConfig(
            artifact_dir=str(trained_artifact),
            features_target="127.0.0.1:1",
            port=0,
            threads=2,
            degrade=False,
            max_message_bytes=2 * 1024 * 1024,
            num_candidates=50,
            security=ServerSecurity(),
            feature_security=ClientSecurity(),
            speed=SpeedOptions(batch_max=4, ann="off", variant="int8", tuning=tuning),
            metrics_host="127.0.0.1",
        )
    ]
    result = CliRunner().invoke(main, ["serve", "inference", "--repo", str(trained_artifact), "--features", "x:1"])
    assert result.exit_code == 2 and "--repo and --model go together" in result.output


def test_recommend_asking_for_more_than_the_unseen_items_gets_each_unseen_item_once(services):
    catalogue = services["recommender"].index.item_ids
    seen = set(history_of(services, "u000")) & set(catalogue)
    assert seen  # the case under test: masking leaves fewer than k items
    reply = recommend(services["infer"], "u000", k=len(catalogue))
    ids = [i.item_id for i in reply.items]
    assert sorted(ids) == sorted(set(catalogue) - seen)
    scores = [i.score for i in reply.items]
    assert scores == sorted(scores, reverse=True) and all(np.isfinite(scores))
