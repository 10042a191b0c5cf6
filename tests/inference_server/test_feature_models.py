"""Feature-based models through the same inference server: alone (ranking the catalogue) and
behind a next-item retrieval stage (two-stage serving). No model-specific server code."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from feature_service.server import create_feature_server
from inference_server.server import create_inference_server
from recsys.artifact import read_manifest
from recsys.v1 import features_pb2, features_pb2_grpc, inference_pb2, inference_pb2_grpc


@pytest.fixture
def stack(request, ranker_artifact, trained_artifact):
    two_stage = request.param
    fserver, fport, _, fcore = create_feature_server(ranker_artifact, "memory://")
    iserver, iport, _, rec = create_inference_server(
        ranker_artifact, f"localhost:{fport}", retrieval_dir=trained_artifact if two_stage else None, num_candidates=8
    )
    channel = grpc.insecure_channel(f"localhost:{iport}")
    fchannel = grpc.insecure_channel(f"localhost:{fport}")
    yield inference_pb2_grpc.InferenceServiceStub(channel), features_pb2_grpc.FeatureServiceStub(fchannel), rec
    channel.close()
    fchannel.close()
    iserver.stop(None)
    fserver.stop(None)
    rec.features.close()
    fcore.close()


def test_ranker_and_retrieval_share_one_schema(ranker_artifact, trained_artifact):
    assert read_manifest(ranker_artifact).schema_hash == read_manifest(trained_artifact).schema_hash
    assert read_manifest(ranker_artifact).task == "rank"


@pytest.mark.parametrize("stack", [False, True], indirect=True, ids=["ranker-alone", "two-stage"])
def test_recommend_and_score_with_a_feature_based_ranker(stack):
    infer, features, rec = stack
    seen = set(
        features.GetUserFeatures(features_pb2.GetUserFeaturesRequest(user_ids=["u005"], max_history=1000), timeout=5)
        .users[0]
        .history
    )
    reply = infer.Recommend(inference_pb2.RecommendRequest(user_id="u005", k=5, exclude_seen=True), timeout=5)
    assert reply.source == inference_pb2.SOURCE_MODEL
    ids = [i.item_id for i in reply.items]
    assert len(ids) == 5 and not seen & set(ids)
    scores = [i.score for i in reply.items]
    assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)
    assert "+" in reply.model_version if rec.retrieval else "+" not in reply.model_version

    scored = infer.Score(inference_pb2.ScoreRequest(user_id="u005", item_ids=ids), timeout=5)
    np.testing.assert_allclose(scored.scores, scores, atol=1e-6)

    # asked for 20: the ranker alone ranks the whole catalogue; behind retrieval it only
    # re-orders the 8 unseen candidates retrieval proposed, so nothing else can come back
    wide = infer.Recommend(inference_pb2.RecommendRequest(user_id="u005", k=20, exclude_seen=True), timeout=5)
    assert len(wide.items) == (8 if rec.retrieval is not None else 20)


@pytest.mark.parametrize("stack", [False], indirect=True)
def test_unknown_user_of_a_ranker_gets_popularity(stack):
    infer, _, _ = stack
    reply = infer.Recommend(inference_pb2.RecommendRequest(user_id="nobody", k=3), timeout=5)
    assert reply.source == inference_pb2.SOURCE_POPULARITY
