"""Feature-based rankers and the rating model: examples, learning, export parity, no skew.

Generated data: each user has a favourite genre (carried by their occupation); a rating is
high when the item has that genre, so features alone separate liked from disliked items, and
users pick items of their genre more often, so implicit feedback carries the same signal.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import torch

from recsys.artifact import read_jsonl, read_manifest, verify_files
from recsys.schema import FIRST_TOKEN, PAD, FeatureSchema
from trainer.data.examples import TEST, TRAIN, FeatureEncoder, build_ranking_data
from trainer.data.tables import load_tables
from trainer.export.ranker import export_ranker
from trainer.families.ranker import RANKERS, RankConfig, predict, train_ranker
from trainer.models.fields import FieldEmbedding, FieldLayout

GENRES = ["Action", "Comedy", "Drama", "Horror"]
SMALL = dict(dim=8, mlp="32", batch_size=64, epochs=12, patience=12, lr=1e-2, history_len=6, threads=1)


def write_genre_data(directory: Path, users: int = 60, items: int = 40, seed: int = 0) -> dict[str, Path]:
    rng = np.random.default_rng(seed)
    item_genres = [sorted({GENRES[i % 4], GENRES[int(rng.integers(0, 4))]}) for i in range(items)]
    rows, t = [], 1_000
    for u in range(users):
        favourite = GENRES[u % 4]
        weights = np.array([4.0 if favourite in g else 1.0 for g in item_genres])  # for implicit labels
        for i in rng.choice(items, size=int(rng.integers(10, 20)), replace=False, p=weights / weights.sum()):
            liked = favourite in item_genres[i]
            rating = int(rng.integers(4, 6)) if liked else int(rng.integers(1, 4))
            if rng.random() < 0.1:
                rating = int(rng.integers(1, 6))
            t += int(rng.integers(1, 50))
            rows.append((f"u{u}", f"i{i}", t, rating))
    directory.mkdir(parents=True, exist_ok=True)
    paths = {k: directory / f"{k}.csv" for k in ("interactions", "users", "items")}
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "rating"]).to_csv(paths["interactions"], index=False)
    pd.DataFrame(
        {
            "user_id": [f"u{u}" for u in range(users)],
            "age": rng.integers(18, 70, users),
            "gender": rng.choice(["F", "M"], users),
            "occupation": [f"job{u % 4}" for u in range(users)],
        }
    ).to_csv(paths["users"], index=False)
    pd.DataFrame(
        {
            "item_id": [f"i{i}" for i in range(items)],
            "title": [f"Film {i}" for i in range(items)],
            "year": rng.integers(1950, 2000, items),
            "genres": ["|".join(g) for g in item_genres],
        }
    ).to_csv(paths["items"], index=False)
    return paths


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    paths = write_genre_data(tmp_path_factory.mktemp("genre"))
    return load_tables(paths["interactions"], paths["users"], paths["items"])


@pytest.fixture(scope="module")
def runs(tables):
    """One trained run per model, shared by the learning and export tests."""
    return {
        name: train_ranker(RankConfig(model=name, **SMALL), tables=tables, progress=False, log=lambda *_: None)
        for name in RANKERS
    }


@pytest.fixture(scope="module")
def artifacts(runs, tmp_path_factory):
    """name -> artifact directory, exported on first use."""
    root, done = tmp_path_factory.mktemp("artifacts"), {}

    def get(name: str) -> Path:
        if name not in done:
            export_ranker(runs[name], root / name)
            done[name] = root / name
        return done[name]

    return get


@pytest.mark.parametrize("name", ["deepfm", "dcn", "conv_ctr"])
def test_each_ranker_beats_chance_and_the_prior(runs, name):
    run = runs[name]
    assert run.fit.best_metrics["valid_auc"] > 0.8, run.fit.history[-1]
    assert run.test_metrics["test_auc"] > 0.75
    labels = run.data.label[run.data.rows(TRAIN)]
    prior = labels.mean()
    prior_logloss = -(prior * np.log(prior) + (1 - prior) * np.log(1 - prior))
    assert run.test_metrics["test_logloss"] < prior_logloss


def test_rating_model_beats_the_training_mean(runs):
    run = runs["rating"]
    data = run.data
    mean = data.label[data.rows(TRAIN)].mean()
    baseline = float(np.sqrt(((data.label[data.rows(TEST)] - mean) ** 2).mean()))
    assert run.test_metrics["test_rmse"] < 0.9 * baseline, (run.test_metrics, baseline)
    scores = predict(run.fit.model, data, data.rows(TEST))
    assert scores.min() >= 1.0 and scores.max() <= 5.0


def test_features_go_through_the_schema_encoders(runs, tables):
    run = runs["deepfm"]
    data, schema = run.data, run.schema
    enc = data.encoder
    assert [s.name for s in enc.user_cat] == ["gender", "occupation"] and [s.name for s in enc.user_num] == ["age"]
    assert [s.name for s in enc.item_num] == ["year"] and [s.name for s in enc.item_multi] == ["genres"]
    users = tables.users.set_index("user_id")
    gender, occupation, age = schema.user_spec("gender"), schema.user_spec("occupation"), schema.user_spec("age")
    for row, user in enumerate(data.user_ids):
        assert data.user_cat[row].tolist() == [
            gender.encode_category(users.loc[user, "gender"]),
            occupation.encode_category(users.loc[user, "occupation"]),
        ]
        assert data.user_num[row, 0] == pytest.approx(age.encode_numeric(float(users.loc[user, "age"])))
    genres = schema.item_spec("genres")
    items = tables.items.set_index("item_id")
    for pos, item in enumerate(run.index.item_ids):
        tokens = genres.encode_categories(items.loc[item, "genres"].split("|"))
        padded = tokens + [PAD] * (enc.multi_len - len(tokens))
        assert data.item_multi[pos + FIRST_TOKEN, 0].tolist() == padded


def test_unknown_values_encode_as_oov_and_missing_as_pad(runs):
    enc = runs["deepfm"].data.encoder
    cat, num = enc.encode_user({"gender": "X", "age": None})
    assert cat == [1, PAD] and num == [0.0]
    _, _, multi = enc.encode_item({"genres": ["Comedy", "Nope"]})
    assert enc.multi_len == 2  # the most genres any item has
    assert multi == [[enc.item_multi[0].encode_category("Comedy"), 1]]
    _, _, multi = enc.encode_item({"genres": ["Comedy", "Drama", "Horror"]})
    assert len(multi[0]) == 2  # truncated to the first M tokens
    assert enc.encode_item({}) == ([], [0.0], [[PAD, PAD]])


def test_history_is_the_events_before_each_example(tables):
    runs_schema = FeatureSchema()
    from trainer.data.encoding import build_item_index

    index = build_item_index(tables.interactions, tables.items)
    data = build_ranking_data(tables, index, runs_schema, FeatureEncoder.from_schema(runs_schema, 1, 4))
    inter = tables.interactions
    first_user = inter["user_id"].iloc[0]
    rows = np.flatnonzero(inter["user_id"].to_numpy() == first_user)
    tokens = [index.item_ids.index(i) + FIRST_TOKEN for i in inter["item_id"].iloc[rows]]
    assert data.history[rows[0]].tolist() == [PAD] * 4
    assert data.history[rows[2]].tolist() == [PAD, PAD, *tokens[:2]]
    assert data.history[rows[6]].tolist() == tokens[2:6]


@pytest.mark.parametrize("sampling", ["uniform", "popularity"])
def test_implicit_negatives_are_unseen_items_with_their_positives_split(tables, sampling):
    from trainer.data.encoding import build_item_index

    index = build_item_index(tables.interactions, tables.items)
    schema = FeatureSchema()
    data = build_ranking_data(
        tables,
        index,
        schema,
        FeatureEncoder.from_schema(schema, 1, 3),
        label="implicit",
        negatives=2,
        negative_sampling=sampling,
        seed=3,
    )
    n = len(tables.interactions)
    assert len(data.label) == 3 * n and data.label[:n].all() and not data.label[n:].any()
    seen = set(zip(data.user_row[:n].tolist(), data.item[:n].tolist()))
    assert not any(pair in seen for pair in zip(data.user_row[n:].tolist(), data.item[n:].tolist()))
    assert (data.item[n:] >= FIRST_TOKEN).all()
    np.testing.assert_array_equal(data.split[n:], np.repeat(data.split[:n], 2))
    shares = np.bincount(data.split[:n], minlength=3) / n
    np.testing.assert_allclose(shares, [0.8, 0.1, 0.1], atol=0.01)


def test_implicit_labels_train_a_ranker(tables):
    cfg = RankConfig(
        model="deepfm",
        label="implicit",
        negatives=2,
        negative_sampling="popularity",
        class_weight="balanced",
        **{**SMALL, "epochs": 6},
    )
    run = train_ranker(cfg, tables=tables, progress=False, log=lambda *_: None)
    assert run.test_metrics["test_auc"] > 0.6


def test_field_embedding_ignores_padding_and_handles_empty_history():
    torch.manual_seed(0)
    layout = FieldLayout(num_items=5, user_cat=(4,), item_multi=(6,), history=True, history_attention=True)
    emb = FieldEmbedding(layout, 4)
    args = dict(
        user_cat=torch.tensor([[2]]),
        user_num=None,
        item_id=torch.tensor([3]),
        item_cat=None,
        item_num=None,
        item_multi=torch.tensor([[[2, 3, 0]]]),
    )
    short = emb(**args, history=torch.tensor([[4, 5]]))
    padded = emb(**{**args, "item_multi": torch.tensor([[[2, 3, 0]]])}, history=torch.tensor([[0, 0, 4, 5]]))
    torch.testing.assert_close(short, padded)
    empty = emb(**args, history=torch.tensor([[0, 0, 0]]))
    assert empty.shape == (1, layout.num_fields, 4) and torch.isfinite(empty).all()


@pytest.mark.parametrize("name", sorted(RANKERS))
def test_export_matches_torch_and_describes_its_inputs(artifacts, name):
    directory = artifacts(name)
    loaded = read_manifest(directory)
    assert loaded.metrics["export_parity_max_abs_diff"] <= 1e-4
    verify_files(directory, loaded)
    assert loaded.task == ("rating" if name == "rating" else "rank") and loaded.output == "score"
    assert [(i.name, i.source, i.dtype) for i in loaded.inputs] == [
        ("user_cat", "user.cat", "int64"),
        ("user_num", "user.num", "float32"),
        ("item_id", "item.id", "int64"),
        ("item_num", "item.num", "float32"),
        ("item_multi", "item.multi", "int64"),
        ("history", "user.history", "int64"),
    ]  # no item categorical features: no item_cat input
    session = ort.InferenceSession(str(directory / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [i.name for i in loaded.inputs]
    assert [o.name for o in session.get_outputs()] == ["score"]
    assert loaded.training["inputs"]["user_cat"] == ["gender", "occupation"]
    assert loaded.metrics["test_rmse" if name == "rating" else "test_auc"] > 0
    meta = {p.key: p.value for p in onnx.load(str(directory / "model.onnx")).metadata_props}
    assert json.loads(meta["recsys.manifest"])["schema_hash"] == loaded.schema_hash
    assert {"report.json", "curves.png"} <= set(loaded.files)


def test_ranker_and_sequential_artifacts_share_one_schema(runs, tables):
    from trainer.data.encoding import build_item_index, build_schema

    index = build_item_index(tables.interactions, tables.items)
    # the sequential pipeline's schema for the same tables and history length: one hash, so a
    # retrieval model and a ranker can be served from one feature service
    assert runs["deepfm"].schema.hash == build_schema(tables, index, SMALL["history_len"]).hash


def test_serving_side_rebuilds_the_inputs_from_the_artifact_alone(runs, artifacts):
    """What the serving side will do: read only the artifact, encode with the schema, run ORT."""
    run, directory = runs["deepfm"], artifacts("deepfm")
    m = read_manifest(directory)
    schema, names = m.schema, m.training["inputs"]
    users = {r["user_id"]: r["features"] for r in read_jsonl(directory / "users.jsonl")}
    items = {r["item_id"]: r["features"] for r in read_jsonl(directory / "items.jsonl")}
    item_ids = json.loads((directory / "item_index.json").read_text())["item_ids"]
    histories = {r["user_id"]: r["item_ids"] for r in read_jsonl(directory / "histories.jsonl")}
    user, candidates = run.data.user_ids[5], item_ids[:7]
    token = {i: p + FIRST_TOKEN for p, i in enumerate(item_ids)}
    u, L, M = users[user], names["history_len"], names["item_multi_len"]
    recent = [token[i] for i in histories[user]][-L:]

    def multi(features, name):
        tokens = schema.item_spec(name).encode_categories(features.get(name))[:M]
        return tokens + [PAD] * (M - len(tokens))

    feeds = {
        "user_cat": [[schema.user_spec(n).encode_category(u.get(n)) for n in names["user_cat"]]] * 7,
        "user_num": [[schema.user_spec(n).encode_numeric(u.get(n)) for n in names["user_num"]]] * 7,
        "item_id": [token[i] for i in candidates],
        "item_num": [
            [schema.item_spec(n).encode_numeric(items[i].get(n)) for n in names["item_num"]] for i in candidates
        ],
        "item_multi": [[multi(items[i], n) for n in names["item_multi"]] for i in candidates],
        "history": [[PAD] * (L - len(recent)) + recent] * 7,
    }
    dtypes = {i.name: i.dtype for i in m.inputs}
    feeds = {k: np.asarray(v, dtype=dtypes[k]) for k, v in feeds.items()}
    session = ort.InferenceSession(str(directory / "model.onnx"), providers=["CPUExecutionProvider"])
    served = session.run(["score"], feeds)[0]

    data = replace(run.data)  # the trainer's own tables for the same rows
    row = data.user_ids.index(user)
    extra = len(data.label)
    data.user_row = np.concatenate([data.user_row, np.full(7, row)])
    data.item = np.concatenate([data.item, feeds["item_id"]])
    data.history = np.concatenate([data.history, feeds["history"]])
    expected = predict(run.fit.model, data, np.arange(extra, extra + 7))
    np.testing.assert_allclose(served, expected, atol=1e-5)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="model"):
        RankConfig(model="nope").check()
    with pytest.raises(ValueError, match="negative_sampling"):
        RankConfig(negative_sampling="zipf").check()
    with pytest.raises(ValueError, match="class_weight"):
        RankConfig(class_weight="auto").check()


def test_inputs_without_features_are_left_out(tables, tmp_path):
    """No user table and no history: the graph takes only the item inputs."""
    bare = replace(tables, users=None)
    cfg = RankConfig(model="dcn", **{**SMALL, "history_len": 0, "epochs": 2})
    run = train_ranker(cfg, tables=bare, progress=False, log=lambda *_: None)
    manifest = export_ranker(run, tmp_path / "a")
    assert [i.name for i in manifest.inputs] == ["item_id", "item_num", "item_multi"]
    session = ort.InferenceSession(str(tmp_path / "a" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["item_id", "item_num", "item_multi"]
    assert manifest.training["inputs"]["user_cat"] == [] and manifest.training["inputs"]["history_len"] == 0
