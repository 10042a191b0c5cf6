"""Ensembles: the combined graph is the weighted sum of its members, members are trained apart
with their own settings and seeds, bad member settings are refused by name, and an ensemble
artifact serves (exactly and through its ANN index) like any single model."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch

from feature_service.server import create_feature_server
from inference_server.server import create_inference_server
from inference_server.speed import SpeedOptions
from recsys.artifact import read_manifest
from recsys.schema import FIRST_TOKEN, PAD
from recsys.v1 import inference_pb2, inference_pb2_grpc
from trainer.ensemble import member_configs
from trainer.models import MODELS
from trainer.models.ensemble import Ensemble
from trainer.train import TrainConfig

NUM_ITEMS = 30


def build(name: str, max_len: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = TrainConfig(model=name, max_len=max_len, hidden=16).model_config(NUM_ITEMS)
    return MODELS[name][1](cfg).eval()


def test_ensemble_scores_are_the_weighted_sum_of_members_reading_their_own_lengths():
    members = [build("sasrec", 6, 0), build("gru4rec", 10, 1), build("caser", 10, 2)]  # caser has an output bias
    weights = [0.5, 2.0, 1.5]
    ensemble = Ensemble(members, weights).eval()
    seq = torch.randint(FIRST_TOKEN, NUM_ITEMS + FIRST_TOKEN, (3, 10))
    seq[0, :4] = PAD
    with torch.no_grad():
        expected = sum(w * m(seq[:, -m.cfg.max_len:]) for m, w in zip(members, weights))
        np.testing.assert_allclose(ensemble(seq).numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
        # encode . output_embeddings + bias is the same score: what the ANN user encoder relies on
        hidden = ensemble.encode(seq)[:, -1, :]
        again = hidden @ ensemble.output_embeddings().T + ensemble.output_bias()
        np.testing.assert_allclose(again.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_members_inherit_the_ensemble_settings_and_get_their_own_seeds():
    cfg = TrainConfig(model="ensemble", seed=2, max_len=20, dropout=0.4,
                      members=({"model": "sasrec", "max_len": 8}, {"model": "gru4rec", "dropout": 0.1}))
    sasrec, gru = member_configs(cfg)
    assert (sasrec.model, sasrec.max_len, sasrec.dropout, sasrec.seed) == ("sasrec", 8, 0.4, 4)
    assert (gru.model, gru.max_len, gru.dropout, gru.seed) == ("gru4rec", 20, 0.1, 5)
    assert sasrec.members == () and gru.members == ()


@pytest.mark.parametrize("members, message", [
    ((), "needs `members`"),
    (({"dropout": 0.1},), "at least a `model` key"),
    (({"model": "ensemble"},), "cannot be ensembles"),
    (({"model": "content_sasrec"},), "cannot be ensembles or content models"),
    (({"model": "sasrec", "hidden_size": 8},), "unknown setting"),
    (({"model": "sasrec", "seed": 3},), "take their seeds from the ensemble"),
    (({"model": "sasrec", "max_len": 99},), "raise the ensemble's max_len"),
    (({"model": "sasrec", "lr": -1},), "lr must be > 0"),
    (({"model": "sasrec", "max_len": 20}, {"model": "gru4rec", "max_len": 30}), "must be its longest member's"),
])
def test_bad_members_are_refused_by_name(members, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(model="ensemble", max_len=50, members=members).check()


def test_members_only_with_model_ensemble():
    with pytest.raises(ValueError, match="for model ensemble only"):
        TrainConfig(model="sasrec", members=({"model": "sasrec"},)).check()


@pytest.fixture(scope="module")
def ensemble_artifact(ring_data, tmp_path_factory):
    from trainer.pipeline import train_and_export

    out = tmp_path_factory.mktemp("ensemble") / "ensemble"
    cfg = TrainConfig(model="ensemble", epochs=6, batch_size=32, max_len=10, hidden=16, heads=2, layers=1, inner=32,
                      eval_every=2, patience=2, lr=5e-3, ann="on",
                      members=({"model": "sasrec", "max_len": 8}, {"model": "gru4rec"}))
    train_and_export(ring_data["train"], out, cfg, users=ring_data["users"], items=ring_data["items"],
                     progress=False, log=lambda *_: None)
    return out


def test_ensemble_artifact_records_its_members(ensemble_artifact):
    manifest = read_manifest(ensemble_artifact)
    assert manifest.model_kind == "ensemble" and manifest.max_history == 10
    members = manifest.training["members"]
    assert [(m["model"], m["seed"]) for m in members] == [("sasrec", 0), ("gru4rec", 1)]
    assert all(m["weight"] > 0 and 0 <= m["ndcg@10"] <= 1 for m in members)
    assert "valid_ndcg@10" in manifest.metrics and manifest.metrics["export_parity_max_abs_diff"] < 1e-3
    assert (ensemble_artifact / "curves.png").stat().st_size > 0


def test_ensemble_serves_like_a_single_model_exactly_and_through_its_index(ensemble_artifact):
    fserver, fport, _, fcore = create_feature_server(ensemble_artifact, "memory://")
    servers = {}
    try:
        for mode in ("on", "off"):
            servers[mode] = create_inference_server(ensemble_artifact, f"localhost:{fport}", speed=SpeedOptions(ann=mode))
        answers = {}
        for mode, (_, port, _, _) in servers.items():
            with grpc.insecure_channel(f"localhost:{port}") as channel:
                stub = inference_pb2_grpc.InferenceServiceStub(channel)
                reply = stub.Recommend(inference_pb2.RecommendRequest(user_id="u003", k=8, exclude_seen=True), timeout=10)
                assert reply.source == inference_pb2.SOURCE_MODEL and len(reply.items) == 8
                ids = [i.item_id for i in reply.items]
                scored = stub.Score(inference_pb2.ScoreRequest(user_id="u003", item_ids=ids), timeout=10)
                answers[mode] = (ids, [i.score for i in reply.items], list(scored.scores))
        assert answers["on"][0] == answers["off"][0]
        np.testing.assert_allclose(answers["on"][1], answers["off"][1], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(answers["off"][2], answers["off"][1], rtol=1e-4, atol=1e-4)
    finally:
        for server, _, _, recommender in servers.values():
            server.stop(None)
            recommender.features.close()
        fserver.stop(None)
        fcore.close()
