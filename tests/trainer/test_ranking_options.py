"""Ranker training options: checkpoint every epoch and resume, schedules and inits, class
weights, popularity-weighted negatives, and the optional user-id field through export and serving."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from inference_server.feature_inputs import FeatureInputs
from recsys.artifact import read_manifest, read_user_index, verify_files
from recsys.schema import FIRST_TOKEN, OOV
from tests.trainer.test_ranking import SMALL, write_genre_data
from trainer import loop as loop_module
from trainer.checkpoint import load_checkpoint
from trainer.data.examples import TRAIN, build_ranking_data
from trainer.data.tables import load_tables
from trainer.export.ranker import export_ranker
from trainer.families import ranker as ranking_module
from trainer.families.ranker import RankConfig, batch_inputs, predict, train_ranker


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    paths = write_genre_data(tmp_path_factory.mktemp("genre"))
    return load_tables(paths["interactions"], paths["users"], paths["items"])


def quiet(cfg, tables, **kw):
    return train_ranker(cfg, tables=tables, progress=False, log=lambda *_: None, **kw)


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_resume_after_a_crash_reaches_the_same_ranker(tables, tmp_path, crash_after_epoch, ema):
    cfg = RankConfig(
        model="dcn",
        **{**SMALL, "epochs": 4, "patience": 4},
        optimizer="adamw",
        weight_decay=1e-3,
        schedule="warmup_cosine",
        warmup_epochs=1,
        ema=ema,
    )
    straight = quiet(cfg, tables, checkpoint_dir=tmp_path / "a")
    with crash_after_epoch(2):
        quiet(cfg, tables, checkpoint_dir=tmp_path / "b")
    assert load_checkpoint(tmp_path / "b")["epoch"] == 2

    resumed = quiet(cfg, tables, checkpoint_dir=tmp_path / "b", resume=True)
    assert resumed.fit.resumed_from == 2 and len(resumed.fit.history) == 4
    assert resumed.fit.best_epoch == straight.fit.best_epoch
    assert resumed.test_metrics == straight.test_metrics
    for a, b in zip(straight.fit.model.state_dict().values(), resumed.fit.model.state_dict().values()):
        torch.testing.assert_close(a, b)

    with pytest.raises(ValueError, match="another config"):
        quiet(
            RankConfig(model="dcn", **{**SMALL, "epochs": 4, "lr": 0.02}),
            tables,
            checkpoint_dir=tmp_path / "b",
            resume=True,
        )


def test_a_schedule_and_another_init_train_a_ranker(tables):
    run = quiet(RankConfig(model="deepfm", **SMALL, init="xavier_normal", schedule="cosine"), tables)
    assert run.test_metrics["test_auc"] > 0.75  # the genre signal is strong; chance is 0.5
    assert float(run.fit.model.embed.item_id.weight.detach()[0].abs().sum()) == 0.0  # PAD row stays zero


@pytest.mark.parametrize("init", ["xavier_uniform", "xavier_normal", "normal"])
def test_init_sets_the_initial_weights(tables, init):
    run = quiet(RankConfig(model="deepfm", **{**SMALL, "epochs": 1, "lr": 1e-9}, init=init), tables)  # ~untouched
    layer = run.fit.model.deep[0].weight.detach()
    fan_out, fan_in = layer.shape
    expected = 0.02 if init == "normal" else (2.0 / (fan_in + fan_out)) ** 0.5
    assert float(layer.std()) == pytest.approx(expected, rel=0.1)
    assert float(run.fit.model.embed.item_id.weight.detach()[0].abs().sum()) == 0.0


def test_balanced_class_weights_raise_the_rare_class_scores(tables):
    # label = rating >= 5 makes positives rare; weighting them lifts the mean predicted probability
    base = dict(model="deepfm", **{**SMALL, "epochs": 4}, threshold=5.0)
    plain, weighted = quiet(RankConfig(**base), tables), quiet(RankConfig(**base, class_weight="balanced"), tables)
    rows = plain.data.rows(TRAIN)
    assert plain.data.label[rows].mean() < 0.35
    assert (
        predict(weighted.fit.model, weighted.data, rows).mean()
        > predict(plain.fit.model, plain.data, rows).mean() + 0.1
    )


def test_popularity_negatives_follow_training_counts(tables):
    from trainer.data.encoding import build_item_index, build_schema
    from trainer.data.examples import FeatureEncoder

    index = build_item_index(tables.interactions, tables.items)
    schema = build_schema(tables, index, 6)
    enc = FeatureEncoder.from_schema(schema, 2, 6)
    counts, positives = {}, None
    for sampling in ("uniform", "popularity"):
        data = build_ranking_data(
            tables, index, schema, enc, label="implicit", negatives=4, negative_sampling=sampling, seed=0
        )
        n = len(index.item_ids) + FIRST_TOKEN
        counts[sampling] = np.bincount(data.item[data.label == 0], minlength=n)[FIRST_TOKEN:]
        positives = np.bincount(data.item[(data.label == 1) & (data.split == TRAIN)], minlength=n)[FIRST_TOKEN:]
    # uniform negatives avoid popular items (users have seen them more often); popularity-weighted
    # ones follow the training counts
    corr = {k: np.corrcoef(v, positives)[0, 1] for k, v in counts.items()}
    assert corr["popularity"] > 0.3 and corr["popularity"] > corr["uniform"] + 0.5


def test_user_id_field_exports_and_serves_through_the_user_index(tables, tmp_path):
    run = quiet(RankConfig(model="deepfm", **SMALL, user_id=True), tables)
    data, model = run.data, run.fit.model
    assert model.cfg.fields.user_ids == len(data.user_index) + FIRST_TOKEN
    trained = set(data.user_row[data.split == TRAIN])
    assert all((data.user_token[r] >= FIRST_TOKEN) == (r in trained) for r in range(len(data.user_ids)))
    export_ranker(run, tmp_path / "a")
    manifest = read_manifest(tmp_path / "a")
    verify_files(tmp_path / "a", manifest)
    assert [i.source for i in manifest.inputs][-1] == "user.id" and "user_index.json" in manifest.files
    user_index = read_user_index(tmp_path / "a")
    assert user_index == {u: i + FIRST_TOKEN for i, u in enumerate(data.user_index)}

    # the server's feeds for a user (FeatureInputs, from the artifact alone) score like torch
    inputs = FeatureInputs(manifest, run.index.item_ids, user_index)
    session = ort.InferenceSession(str(tmp_path / "a" / "model.onnx"))
    row = int(np.flatnonzero(data.split == TRAIN)[0])
    user = data.user_ids[int(data.user_row[row])]
    raw = {r["user_id"]: r["features"] for r in _rows(tmp_path / "a" / "users.jsonl")}
    items = {r["item_id"]: r["features"] for r in _rows(tmp_path / "a" / "items.jsonl")}
    inputs.load_items(lambda ids: [(i, items.get(i)) for i in ids])
    history = data.history[row][data.history[row] != 0]
    tokens = np.arange(FIRST_TOKEN, FIRST_TOKEN + 5, dtype=np.int64)
    feeds = inputs.feeds(raw.get(user, {}), history, tokens, user)
    assert (feeds["user_id"] == user_index[user]).all()
    with torch.no_grad():
        x = batch_inputs(data, np.full(5, row), with_user_id=True)
        x["item_id"] = torch.from_numpy(tokens)
        for name in ("item_cat", "item_num", "item_multi"):
            if name in x:
                x[name] = torch.from_numpy(getattr(data, name)[tokens])
        expected = model(**{n: x.get(n) for n in ranking_module.INPUTS}).numpy()
    np.testing.assert_allclose(session.run(["score"], feeds)[0], expected, atol=1e-5)
    # the user's side goes in once for all 5 candidates (its history pooled once), and scores
    # exactly like one copy per candidate row
    assert {i.source for i in manifest.inputs if i.shape[0] == "users"} == {
        "user.cat",
        "user.num",
        "user.history",
        "user.id",
    } & {i.source for i in manifest.inputs}
    assert all(len(feeds[inputs.names[s]]) == 1 for s in inputs.shared_user_rows) and len(feeds["item_id"]) == 5
    per_row = inputs.feeds(raw.get(user, {}), history, tokens, user, row_per_candidate=True)
    assert all(len(v) == 5 for v in per_row.values())
    np.testing.assert_allclose(session.run(["score"], per_row)[0], session.run(["score"], feeds)[0], atol=1e-6)
    assert (inputs.feeds({}, history, tokens, "somebody-new")["user_id"] == OOV).all()


def test_ordinal_training_uses_every_rating_level_and_serves_p_of_the_threshold(tables):
    run = quiet(RankConfig(model="deepfm", **SMALL, ordinal=True), tables)
    assert run.test_metrics["test_auc"] > 0.75
    ratings = run.data.rating[run.data.split == TRAIN]
    from trainer.families.ranker import OrdinalBCE

    loss = OrdinalBCE(ratings, 4.0)
    offsets = loss.offsets.detach().tolist()
    assert loss.levels.tolist() == [2.0, 3.0, 4.0, 5.0] and offsets[loss.anchor] == 0.0
    assert offsets[0] > offsets[1] > 0.0 > offsets[3]  # P(r >= 2) > P(r >= 3) > P(r >= 4) > P(r >= 5)
    # one logit, every level: rating 3 is a positive for t <= 3 and a negative above
    logits = torch.zeros(1)
    with torch.no_grad():
        expected = torch.nn.functional.binary_cross_entropy_with_logits(
            torch.tensor(offsets), torch.tensor([1.0, 1.0, 0.0, 0.0])
        )
        torch.testing.assert_close(loss(logits, torch.tensor([3.0])), expected)


def test_fit_ranker_refuses_bad_option_values(tables):
    for bad in (
        {"schedule": "linear"},
        {"init": "he"},
        {"warmup_epochs": -1},
        {"ordinal": True, "label": "implicit"},
        {"ordinal": True, "class_weight": "balanced"},
        {"ema": 1.0},
        {"ema": -0.1},
    ):
        with pytest.raises(ValueError):
            RankConfig(**bad).check()


def test_ema_update_is_the_moving_average():
    average, model = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    before = average.weight.detach().clone()
    loop_module.ema_update(average, model, 0.75)
    torch.testing.assert_close(average.weight, 0.75 * before + 0.25 * model.weight)


def test_ema_validates_and_keeps_the_average(tables):
    run = quiet(RankConfig(model="deepfm", **{**SMALL, "epochs": 3}, ema=0.9), tables)
    plain = quiet(RankConfig(model="deepfm", **{**SMALL, "epochs": 3}), tables)
    valid = ranking_module.evaluate(run.fit.model, run.data, run.data.rows(ranking_module.VALID), "rank")
    assert valid["auc"] == run.fit.best_metrics["valid_auc"]  # the kept model is the one validated
    assert run.fit.best_metrics["valid_auc"] != plain.fit.best_metrics["valid_auc"]


def _rows(path):
    import json

    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
