"""An interactions file with an `event` column, end to end through the public CLI: the model
trains on the kinds (predicting the next purchase from every event), exports them, the
feature service loads and records them, and the inference server feeds them to the model;
a kind the model never saw reads as out-of-vocabulary, never as an error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest

from recsys.v1 import features_pb2, features_pb2_grpc, inference_pb2, inference_pb2_grpc, types_pb2

RECSYS = [sys.executable, "-m", "recsys.cli"]


def write_views_then_purchases(path: Path, users: int = 40, items: int = 24, seed: int = 0) -> Path:
    """Each user views items of one of two groups and buys some of those viewed."""
    rng = np.random.default_rng(seed)
    rows, t = [], 1_700_000_000
    for u in range(users):
        group = np.arange(u % 2, items, 2)
        for _ in range(int(rng.integers(6, 12))):
            item = f"i{int(rng.choice(group)):02d}"
            t += 1
            rows.append((f"u{u:02d}", item, t, "view"))
            if rng.random() < 0.5:
                t += 1
                rows.append((f"u{u:02d}", item, t, "purchase"))
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "event"]).to_csv(path, index=False)
    return path


@pytest.mark.slow
def test_event_kinds_train_serve_and_record_end_to_end(tmp_path: Path, served_by_cli):
    data = write_views_then_purchases(tmp_path / "events.csv")
    config = tmp_path / "events.toml"
    config.write_text(
        "max_len = 10\nepochs = 3\nbatch_size = 32\nhidden = 16\nheads = 1\nlayers = 1\ninner = 32\n"
        'target_events = ["purchase"]\n'
    )
    artifact = tmp_path / "artifact"
    subprocess.run(
        [*RECSYS, "train", "--interactions", str(data), "--model", "sasrec", "--out", str(artifact),
         "--config", str(config), "--quiet"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["training"]["events"] == ["purchase", "view"]
    assert [i["source"] for i in manifest["inputs"]] == ["user.history", "user.history_events"]

    with (
        served_by_cli(artifact, tmp_path) as servers,
        grpc.insecure_channel(servers["features"]) as fchannel,
        grpc.insecure_channel(servers["target"]) as ch,
    ):
        features = features_pb2_grpc.FeatureServiceStub(fchannel)
        inference = inference_pb2_grpc.InferenceServiceStub(ch)
        # the artifact's histories reached the store with their kinds
        user = features.GetUserFeatures(features_pb2.GetUserFeaturesRequest(user_ids=["u00"]), timeout=10).users[0]
        assert len(user.history_events) == len(user.history) and set(user.history_events) <= {"view", "purchase"}

        first = inference.Recommend(
            inference_pb2.RecommendRequest(user_id="u00", k=5, exclude_seen=True, explain=True), timeout=10
        )
        assert first.source == inference_pb2.SOURCE_MODEL and len(first.items) == 5
        # record a purchase and an event of a kind the model never saw
        bought = first.items[0].item_id
        recorded = features.RecordInteractions(
            features_pb2.RecordInteractionsRequest(
                interactions=[
                    types_pb2.Interaction(user_id="u00", item_id=bought, timestamp=1_800_000_000, event="purchase"),
                    types_pb2.Interaction(
                        user_id="u00", item_id=first.items[1].item_id, timestamp=1_800_000_001, event="wishlist"
                    ),
                ]
            ),
            timeout=10,
        )
        assert recorded.recorded == 2
        user = features.GetUserFeatures(features_pb2.GetUserFeaturesRequest(user_ids=["u00"]), timeout=10).users[0]
        assert list(user.history_events[-2:]) == ["purchase", "wishlist"]

        after = inference.Recommend(inference_pb2.RecommendRequest(user_id="u00", k=5, exclude_seen=True), timeout=10)
        assert after.source == inference_pb2.SOURCE_MODEL and len(after.items) == 5
        assert not {bought, first.items[1].item_id} & {i.item_id for i in after.items}  # now seen
        scored = inference.Score(
            inference_pb2.ScoreRequest(user_id="u00", item_ids=[i.item_id for i in after.items]), timeout=10
        )
        assert list(scored.scores) == pytest.approx([i.score for i in after.items], abs=1e-4)
        # a bad kind is refused whole, naming the field
        with pytest.raises(grpc.RpcError) as refused:
            features.RecordInteractions(
                features_pb2.RecordInteractionsRequest(
                    interactions=[types_pb2.Interaction(user_id="u00", item_id=bought, timestamp=1, event="x" * 65)]
                ),
                timeout=10,
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "event" in refused.value.details()
    assert servers["returncodes"] == [0, 0], servers["logs"]
