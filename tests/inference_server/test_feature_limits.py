"""What a real day brings to the inference server's feature look-ups and model runs: answers
larger than gRPC's default 4 MiB, long histories with long ids, a model run that gives NaN.
None of them may fail a request: the look-ups are sized to the receive limit, a single oversize
row is left out and counted, and non-finite scores are answered from popularity, flagged."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from feature_service.server import create_feature_server
from feature_service.stores.base import Event
from inference_server.feature_client import FeatureClient, _UserAsk
from inference_server.server import start_inference_service
from recsys.v1 import features_pb2, features_pb2_grpc, inference_pb2, inference_pb2_grpc, types_pb2


def heavy_genres(n: int = 1000, chars: int = 120) -> types_pb2.FeatureValue:
    """A multi-valued feature of `n` values of `chars` characters: within the documented limits."""
    return types_pb2.FeatureValue(
        categories=types_pb2.StringList(values=[f"{i:05d}" + "g" * (chars - 5) for i in range(n)])
    )


@pytest.fixture
def heavy_items(ranker_artifact):
    """A feature service whose 40 items each carry ~120 KB of genres: 4.9 MB for the catalogue,
    over gRPC's default 4 MiB receive limit."""
    server, port, _, core = create_feature_server(ranker_artifact, "memory://", host="127.0.0.1")
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = features_pb2_grpc.FeatureServiceStub(channel)
        rows = [features_pb2.FeatureRow(id=f"m{i:02d}", features={"genres": heavy_genres()}) for i in range(40)]
        for start in range(0, 40, 10):
            stub.UpdateItemFeatures(features_pb2.UpdateItemFeaturesRequest(rows=rows[start : start + 10]), timeout=30)
    yield port
    server.stop(None)
    core.close()


def test_item_features_over_4_mib_do_not_take_the_ranker_down(ranker_artifact, heavy_items) -> None:
    service = start_inference_service(ranker_artifact, f"127.0.0.1:{heavy_items}", host="127.0.0.1")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            reply = stub.Recommend(inference_pb2.RecommendRequest(user_id="u005", k=5), timeout=10)
            assert reply.source == inference_pb2.SOURCE_MODEL and not reply.degraded and len(reply.items) == 5
            scored = stub.Score(inference_pb2.ScoreRequest(user_id="u005", item_ids=["m01", "m02"]), timeout=10)
            assert not scored.degraded and all(np.isfinite(scored.scores))
    finally:
        service.stop(None)


def test_an_item_larger_than_the_limit_alone_is_left_out_and_counted(heavy_items) -> None:
    client = FeatureClient(f"127.0.0.1:{heavy_items}", max_message_bytes=64 * 1024)
    oversize: list[tuple[str, int]] = []
    client.on_oversize = lambda what, n: oversize.append((what, n))
    try:
        found = client.get_items(["m00", "m01", "nope"])
    finally:
        client.close()
    assert found == {} and oversize == [("item", 1), ("item", 1)]  # each ~120 KB row alone exceeds 64 KiB


def test_long_histories_of_long_ids_fit_one_combined_lookup(trained_artifact) -> None:
    """48 users with 1,000 events of 250-character item ids: ~13 MB in one combined answer."""
    server, port, _, core = create_feature_server(trained_artifact, "memory://", host="127.0.0.1")
    users = [f"long{u:02d}" for u in range(48)]
    for user in users:
        core.store.append_events([Event(user, f"{n:04d}" + "x" * 246, 1_000 + n) for n in range(1000)])
    client = FeatureClient(f"127.0.0.1:{port}", timeout_s=30)
    try:
        import time

        deadline = time.monotonic() + 30
        views = client._fetch_users([_UserAsk(u, 1000, deadline) for u in users])
    finally:
        client.close()
        server.stop(None)
        core.close()
    assert [type(v).__name__ for v in views] == ["UserView"] * 48
    assert all(v.found and len(v.history) == 1000 for v in views)


def test_non_finite_scores_are_a_failed_run_answered_from_popularity(trained_artifact, monkeypatch) -> None:
    fserver, fport, _, fcore = create_feature_server(trained_artifact, "memory://", host="127.0.0.1")
    service = start_inference_service(trained_artifact, f"127.0.0.1:{fport}", host="127.0.0.1")
    session = service.recommender.session
    real = session.scores
    monkeypatch.setattr(session, "scores", lambda window: np.full_like(real(window), np.nan))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            reply = stub.Recommend(inference_pb2.RecommendRequest(user_id="u005", k=5), timeout=10)
            assert reply.degraded and reply.source == inference_pb2.SOURCE_POPULARITY and len(reply.items) == 5
            assert all(np.isfinite(i.score) for i in reply.items)
            scored = stub.Score(inference_pb2.ScoreRequest(user_id="u005", item_ids=["m01"]), timeout=10)
            assert scored.degraded and np.isfinite(scored.scores).all()
        text = service.metrics.render().decode()
        assert 'recsys_failures_total{cause="non_finite_scores"} 2.0' in text
    finally:
        service.stop(None)
        fserver.stop(None)
        fcore.close()
