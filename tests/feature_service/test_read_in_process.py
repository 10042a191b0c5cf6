"""An inference server reading a Redis store in its own process (`--feature-store redis://...`)
while the feature service writes it: the Redis side of tests/inference_server/test_local_features.py."""

from __future__ import annotations

import grpc

from feature_service.server import create_feature_server
from inference_server.server import create_inference_server
from recsys.cli.serve import open_feature_core
from recsys.v1 import features_pb2, features_pb2_grpc, inference_pb2, inference_pb2_grpc, types_pb2


def test_redis_store_read_in_process_sees_the_feature_services_writes(trained_artifact, redis_url, redis_prefix):
    url = f"{redis_url}?prefix={redis_prefix}"
    fserver, fport, _, fcore = create_feature_server(trained_artifact, url)
    iserver, iport, _, local = create_inference_server(
        trained_artifact, "unused:1", feature_store=url, open_feature_store=open_feature_core
    )
    try:
        with grpc.insecure_channel(f"localhost:{iport}") as ic, grpc.insecure_channel(f"localhost:{fport}") as fc:
            infer, features = inference_pb2_grpc.InferenceServiceStub(ic), features_pb2_grpc.FeatureServiceStub(fc)
            request = inference_pb2.RecommendRequest(user_id="u001", k=5, exclude_seen=True)
            before = infer.Recommend(request, timeout=5)
            assert before.source == inference_pb2.SOURCE_MODEL and not before.degraded
            top = before.items[0].item_id
            interaction = types_pb2.Interaction(user_id="u001", item_id=top, timestamp=2_000_000_000)
            features.RecordInteractions(features_pb2.RecordInteractionsRequest(interactions=[interaction]), timeout=5)
            assert top not in [i.item_id for i in infer.Recommend(request, timeout=5).items]
            assert local.features.name.startswith("feature store redis://")
    finally:
        iserver.stop(None)
        fserver.stop(None)
        local.features.close()
        fcore.close()
