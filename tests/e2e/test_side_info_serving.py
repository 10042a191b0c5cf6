"""A SASRec with user features and item side information, trained, exported and served by the
unchanged servers (`recsys serve features` + `recsys serve inference`): Recommend, Score,
exclude_seen and explanations, with the served scores equal to the trained model's."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from recsys.artifact import read_manifest
from recsys.schema import FIRST_TOKEN, PAD
from recsys.v1 import inference_pb2, inference_pb2_grpc
from tests.conftest import write_ring_data


@pytest.mark.slow
def test_side_info_model_is_served_unchanged(tmp_path: Path, served_by_cli) -> None:
    from trainer.export.side_info import export_side_info
    from trainer.families.next_item import TrainConfig
    from trainer.families.side_info import train_side_info

    data = write_ring_data(tmp_path / "data")
    cfg = TrainConfig(
        model="sasrec",
        epochs=12,
        batch_size=32,
        max_len=10,
        hidden=32,
        heads=1,
        layers=1,
        inner=64,
        dropout=0.1,
        lr=0.005,
        eval_every=4,
        seed=0,
        threads=1,
    )
    run = train_side_info(
        cfg,
        data["interactions"],
        user_features=True,
        item_features=True,
        users=data["users"],
        items=data["items"],
        progress=False,
        log=lambda *_: None,
    )
    artifact = tmp_path / "artifact"
    manifest = export_side_info(run, artifact)
    assert {i.source for i in manifest.inputs} == {"user.cat", "user.num", "user.history"}
    assert read_manifest(artifact).needs.user  # the store must serve the user features it reads

    model = run.fit.model.eval()
    row = run.user_ids.index("u003")
    history = run.sequences[row]
    window = np.full((1, cfg.max_len), PAD, dtype=np.int64)
    window[0, -min(len(history), cfg.max_len) :] = history[-cfg.max_len :]
    with torch.no_grad():
        expected = model(torch.from_numpy(window), **run.data.inputs(torch.tensor([row])))[0].numpy()
    seen = {run.index.item_ids[t - FIRST_TOKEN] for t in history}

    with served_by_cli(artifact, tmp_path) as servers, grpc.insecure_channel(servers["target"]) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        top = stub.Recommend(
            inference_pb2.RecommendRequest(user_id="u003", k=5, exclude_seen=True, explain=True), timeout=10
        )
        assert top.source == inference_pb2.SOURCE_MODEL and len(top.items) == 5
        assert not {i.item_id for i in top.items} & seen
        # The servers fed the user's stored features: the scores are the trained model's.
        for item in top.items:
            assert item.score == pytest.approx(expected[run.index.item_ids.index(item.item_id)], abs=1e-4)
        read = {run.index.item_ids[t - FIRST_TOKEN] for t in history[-cfg.max_len :]}
        assert any(i.because_items for i in top.items)
        assert all(a.name in read and a.contribution > 0 for i in top.items for a in i.because_items)
        features = {a.name for i in top.items for a in i.because_features}  # the user's own features too
        assert features and features <= {f"user.{f.name}" for f in manifest.schema.user_features}

        scored = stub.Score(inference_pb2.ScoreRequest(user_id="u003", item_ids=[i.item_id for i in top.items]))
        assert scored.scores == pytest.approx([i.score for i in top.items], abs=1e-6)

        with_seen = stub.Recommend(inference_pb2.RecommendRequest(user_id="u003", k=40), timeout=10)
        assert {i.item_id for i in with_seen.items} & seen  # without exclude_seen the history may come back

        unknown = stub.Recommend(inference_pb2.RecommendRequest(user_id="nobody", k=3, exclude_seen=True), timeout=10)
        assert len(unknown.items) == 3

        unknown_item = stub.Score(inference_pb2.ScoreRequest(user_id="u003", item_ids=["no-such-item"]), timeout=10)
        assert unknown_item.scores == [float("-inf")]  # the model cannot rank what it never saw
        with pytest.raises(grpc.RpcError) as bad:
            stub.Score(inference_pb2.ScoreRequest(user_id="u003", item_ids=[]), timeout=10)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert servers["returncodes"] == [0, 0], servers["logs"]
