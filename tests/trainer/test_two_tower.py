"""Two-tower retrieval: the towers, the in-batch loss, learning, export parity, and serving
through the unchanged inference server (alone and as the retrieval stage of a ranker)."""

from __future__ import annotations

import json

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import torch

from feature_service.server import create_feature_server
from inference_server.server import create_inference_server
from recsys.artifact import read_manifest, verify_files
from recsys.schema import FIRST_TOKEN, PAD
from recsys.v1 import features_pb2, features_pb2_grpc, inference_pb2, inference_pb2_grpc
from trainer.models.fields import FieldLayout
from trainer.models.two_tower import TwoTower, TwoTowerConfig

SMALL = {
    "history_len": 10,
    "dim": 16,
    "field_dim": 16,
    "hidden": 32,
    "batch_size": 64,
    "lr": 1e-2,
    "epochs": 12,
    "patience": 4,
    "seed": 0,
    "threads": 1,
}


def small_model() -> TwoTower:
    layout = FieldLayout(num_items=6, user_cat=(4,), n_user_num=1, item_multi=(5,), history=True)
    return TwoTower(TwoTowerConfig(fields=layout, history_len=5, dim=8, field_dim=8, hidden=16)).eval()


def test_towers_give_unit_vectors_and_all_pad_histories_give_no_nan():
    model = small_model()
    u = model.user_vectors(
        torch.tensor([[1], [2]]), torch.tensor([[0.5], [-1.0]]), torch.tensor([[PAD] * 5, [PAD, PAD, 3, 4, 5]])
    )
    v = model.item_vectors(torch.arange(FIRST_TOKEN, 8), None, None, torch.randint(0, 5, (6, 1, 3)))
    assert u.shape == (2, 8) and v.shape == (6, 8) and torch.isfinite(u).all()
    torch.testing.assert_close(u.norm(dim=-1), torch.ones(2))
    scores = model(torch.tensor([[1]]), torch.tensor([[0.0]]), torch.tensor([[2, 3]]), item_vectors=v)  # short history
    assert scores.shape == (1, 6) and scores.abs().max() <= 1 / model.cfg.temperature + 1e-4


def test_in_batch_loss_masks_copies_of_the_positive_and_applies_log_q(ring_data):
    from trainer.data.encoding import build_item_index, build_schema
    from trainer.data.examples import FeatureEncoder
    from trainer.data.tables import load_tables
    from trainer.families.two_tower import RetrievalConfig, build_retrieval_data, in_batch_loss

    tables = load_tables(ring_data["train"], ring_data["users"], ring_data["items"])
    index = build_item_index(tables.interactions, tables.items)
    schema = build_schema(tables, index, 10)
    data = build_retrieval_data(tables, index, schema, FeatureEncoder.from_schema(schema, 2, 10))
    assert data.valid.sum() == len(data.user_ids)  # every ring user has >= 3 events: one held out each
    model = TwoTower(RetrievalConfig(**SMALL).model_config(data)).eval()
    train = np.flatnonzero(~data.valid)
    _, first = np.unique(data.item[train], return_index=True)
    distinct = train[np.sort(first)][:6]  # six rows with six different items
    same = train[data.item[train] == data.item[distinct[0]]][:4]  # four rows of one item
    zero_q = torch.zeros(data.num_items + FIRST_TOKEN)
    with torch.no_grad():
        assert len(same) == 4 and in_batch_loss(model, data, same, zero_q).item() == pytest.approx(0.0, abs=1e-6)
        base = in_batch_loss(model, data, distinct, zero_q)
        assert base.item() > 0.5
        # a log q equal for every item changes nothing; otherwise column j loses log q_j
        torch.testing.assert_close(base, in_batch_loss(model, data, distinct, zero_q + 3.0))
        log_q = torch.linspace(-6.0, -1.0, data.num_items + FIRST_TOKEN)
        items = data.item[distinct]
        u = model.user_vectors(**data.user_inputs(distinct))
        v = model.item_vectors(**data.item_inputs(items))
        logits = u @ v.T / model.cfg.temperature - log_q[torch.from_numpy(items)].unsqueeze(0)
        expected = torch.nn.functional.cross_entropy(logits, torch.arange(len(distinct)))
        torch.testing.assert_close(in_batch_loss(model, data, distinct, log_q), expected)


@pytest.fixture(scope="module")
def two_tower_artifact(ring_data, tmp_path_factory):
    from trainer.export.two_tower import train_and_export_two_tower
    from trainer.families.two_tower import RetrievalConfig

    out = tmp_path_factory.mktemp("two_tower") / "two_tower"
    train_and_export_two_tower(
        RetrievalConfig(**SMALL),
        ring_data["train"],
        out,
        users=ring_data["users"],
        items=ring_data["items"],
        progress=False,
        log=lambda *_: None,
    )
    return out


def test_two_tower_learns_the_ring_and_exports_a_consistent_artifact(two_tower_artifact, trained_artifact):
    manifest = read_manifest(two_tower_artifact)
    verify_files(two_tower_artifact, manifest)
    assert manifest.task == "next_item" and manifest.model_kind == "two_tower"
    assert [i.source for i in manifest.inputs] == ["user.cat", "user.num", "user.history"]
    # same tables and history length as the SASRec fixture: one schema, one feature service
    assert manifest.schema_hash == read_manifest(trained_artifact).schema_hash
    assert manifest.metrics["export_parity_max_abs_diff"] <= 1e-4
    assert manifest.metrics["valid_ndcg@10"] > 0.3  # next ring item among 40: chance is ~0.07
    # the ANN pieces: user_tower.onnx . item_embeddings.npy == model.onnx's scores
    emb = np.load(two_tower_artifact / "item_embeddings.npy")
    assert (
        emb.shape == (manifest.num_items, manifest.training["retrieval"]["dim"])
        and "item_embeddings.npy" in manifest.files
    )
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    feeds = {
        "user_cat": np.array([[2], [3]], dtype=np.int64),
        "user_num": np.array([[0.3], [-0.2]], dtype=np.float32),
        "history": np.array([[PAD] * 7 + [3, 4, 5], [4, 5, 6, 7, 8, 9, 10, 11, 12, 13]], dtype=np.int64),
    }
    full = ort.InferenceSession(str(two_tower_artifact / "model.onnx")).run(["scores"], feeds)[0]
    user = ort.InferenceSession(str(two_tower_artifact / "user_tower.onnx")).run(["user_vector"], feeds)[0]
    np.testing.assert_allclose(user @ emb.T, full, atol=1e-4)


@pytest.fixture
def stack(request, two_tower_artifact, ring_data, tmp_path_factory):
    """Feature service + inference server over the two-tower artifact, or over a DeepFM with the
    two-tower as its retrieval stage."""
    artifact, retrieval = two_tower_artifact, None
    if request.param:
        from trainer.export.ranker import train_and_export_ranker
        from trainer.families.ranker import RankConfig

        artifact, retrieval = tmp_path_factory.mktemp("ranker") / "deepfm", two_tower_artifact
        cfg = RankConfig(model="deepfm", label="implicit", negatives=2, history_len=10, epochs=2, batch_size=128)
        train_and_export_ranker(
            cfg,
            ring_data["train"],
            artifact,
            users=ring_data["users"],
            items=ring_data["items"],
            progress=False,
            log=lambda *_: None,
        )
    fserver, fport, _, fcore = create_feature_server(artifact, "memory://")
    iserver, iport, _, rec = create_inference_server(
        artifact, f"localhost:{fport}", retrieval_dir=retrieval, num_candidates=6
    )
    channel, fchannel = grpc.insecure_channel(f"localhost:{iport}"), grpc.insecure_channel(f"localhost:{fport}")
    yield inference_pb2_grpc.InferenceServiceStub(channel), features_pb2_grpc.FeatureServiceStub(fchannel), rec
    channel.close()
    fchannel.close()
    iserver.stop(None)
    fserver.stop(None)
    rec.features.close()
    fcore.close()


@pytest.mark.parametrize("stack", [False], indirect=True)
def test_served_two_tower_matches_the_onnx_model_on_the_users_features(stack, two_tower_artifact, ring_data):
    infer, features, _ = stack
    user = features.GetUserFeatures(
        features_pb2.GetUserFeaturesRequest(user_ids=["u007"], max_history=1000), timeout=5
    ).users[0]
    reply = infer.Recommend(inference_pb2.RecommendRequest(user_id="u007", k=5, exclude_seen=True), timeout=5)
    assert reply.source == inference_pb2.SOURCE_MODEL
    ids = [i.item_id for i in reply.items]
    assert len(ids) == 5 and not set(user.history) & set(ids)

    # rebuild the feeds by hand from the artifact's own tables: the server must agree
    manifest = read_manifest(two_tower_artifact)
    index = json.loads((two_tower_artifact / "item_index.json").read_text())["item_ids"]
    rows = [json.loads(line) for line in (two_tower_artifact / "users.jsonl").read_text().splitlines()]
    raw = next(r["features"] for r in rows if r["user_id"] == "u007")
    specs = {s.name: s for s in manifest.schema.user_features}
    tokens = [index.index(i) + FIRST_TOKEN for i in user.history][-10:]
    feeds = {
        "user_cat": np.array([[specs["gender"].encode_category(raw["gender"])]], dtype=np.int64),
        "user_num": np.array([[specs["age"].encode_numeric(raw["age"])]], dtype=np.float32),
        "history": np.array([[PAD] * (10 - len(tokens)) + tokens], dtype=np.int64),
    }
    expected = ort.InferenceSession(str(two_tower_artifact / "model.onnx")).run(["scores"], feeds)[0][0]
    np.testing.assert_allclose([i.score for i in reply.items], [expected[index.index(i)] for i in ids], atol=1e-5)
    scored = infer.Score(inference_pb2.ScoreRequest(user_id="u007", item_ids=ids), timeout=5)
    np.testing.assert_allclose(scored.scores, [i.score for i in reply.items], atol=1e-5)


@pytest.mark.parametrize("stack", [True], indirect=True)
def test_two_tower_as_the_retrieval_stage_of_a_ranker(stack):
    infer, _, rec = stack
    assert rec.retrieval.manifest.model_kind == "two_tower"
    reply = infer.Recommend(inference_pb2.RecommendRequest(user_id="u011", k=20, exclude_seen=True), timeout=5)
    assert reply.source == inference_pb2.SOURCE_MODEL and "+" in reply.model_version
    assert len(reply.items) == 6  # only the retrieval stage's 6 candidates come back, re-ranked
    scores = [i.score for i in reply.items]
    assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)


def test_two_tower_resumes_after_a_crash_to_the_same_model(ring_data, tmp_path, crash_after_epoch):
    from trainer.checkpoint import load_checkpoint
    from trainer.data.tables import load_tables
    from trainer.families.two_tower import RetrievalConfig, train_two_tower

    tables = load_tables(ring_data["train"], ring_data["users"], ring_data["items"])
    cfg = RetrievalConfig(**{**SMALL, "epochs": 4, "patience": 4}, ema=0.5, schedule="cosine")

    def run(directory, resume=False):
        return train_two_tower(
            cfg, tables=tables, progress=False, log=lambda *_: None, checkpoint_dir=directory, resume=resume
        )

    straight = run(tmp_path / "a")
    with crash_after_epoch(2):
        run(tmp_path / "b")
    assert load_checkpoint(tmp_path / "b")["epoch"] == 2

    resumed = run(tmp_path / "b", resume=True)
    assert resumed.fit.resumed_from == 2 and len(resumed.fit.history) == 4
    assert resumed.fit.best_epoch == straight.fit.best_epoch
    assert resumed.fit.best_metrics == straight.fit.best_metrics
    for a, b in zip(straight.fit.model.state_dict().values(), resumed.fit.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
