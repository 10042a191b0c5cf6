"""`evaluate_artifact` on every artifact kind: a ranker (labelled rows and held-out positives), the
rating model and the two-tower model, each figure checked against one computed here
independently (the trained torch model or ONNX fed by hand, metrics counted by hand).

Generated data: each user has a favourite genre (carried by their occupation) and rates items
of it high, so a ranker learns something in two epochs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from recsys.artifact import read_jsonl, read_manifest
from recsys.cli import main
from recsys.schema import FIRST_TOKEN, PAD
from trainer.evaluate import evaluate_artifact
from trainer.export.ranker import export_ranker
from trainer.families.ranker import INPUTS, RankConfig, train_ranker

GENRES = ["Action", "Comedy", "Drama", "Horror"]
TINY = dict(dim=8, mlp="16", batch_size=64, epochs=4, patience=4, lr=3e-2, history_len=5, threads=1, seed=0)


def write_taste_data(directory: Path, users: int = 50, items: int = 30, seed: int = 0) -> dict[str, Path]:
    """train.csv (all but each user's last 3 events), rated.csv (those 3 with ratings),
    held_out.csv (each user's last event, user_id,item_id only), users.csv, items.csv."""
    rng = np.random.default_rng(seed)
    genres = [sorted({GENRES[i % 4], GENRES[int(rng.integers(0, 4))]}) for i in range(items)]
    rows, t = [], 1_000
    for u in range(users):
        weights = np.array([4.0 if GENRES[u % 4] in g else 1.0 for g in genres])
        for i in rng.choice(items, size=int(rng.integers(10, 16)), replace=False, p=weights / weights.sum()):
            liked = GENRES[u % 4] in genres[i]
            t += int(rng.integers(1, 50))
            rows.append((f"u{u}", f"i{i}", t, int(rng.integers(4, 6) if liked else rng.integers(1, 4))))
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "rating"])
    last3 = df.groupby("user_id").tail(3).index
    directory.mkdir(parents=True, exist_ok=True)
    paths = {k: directory / f"{k}.csv" for k in ("train", "rated", "held_out", "users", "items")}
    df.drop(index=last3).to_csv(paths["train"], index=False)
    df.loc[last3, ["user_id", "item_id", "rating"]].to_csv(paths["rated"], index=False)
    df.groupby("user_id").tail(1)[["user_id", "item_id"]].to_csv(paths["held_out"], index=False)
    pd.DataFrame(
        {
            "user_id": [f"u{u}" for u in range(users)],
            "age": rng.integers(18, 70, users),
            "occupation": [f"job{u % 4}" for u in range(users)],
        }
    ).to_csv(paths["users"], index=False)
    pd.DataFrame(
        {
            "item_id": [f"i{i}" for i in range(items)],
            "year": rng.integers(1950, 2000, items),
            "genres": ["|".join(g) for g in genres],
        }
    ).to_csv(paths["items"], index=False)
    return paths


@pytest.fixture(scope="module")
def taste(tmp_path_factory) -> dict[str, Path]:
    return write_taste_data(tmp_path_factory.mktemp("taste"))


def _train_and_export(taste, out: Path, **overrides):
    cfg = RankConfig(**{**TINY, **overrides})
    run = train_ranker(
        cfg, taste["train"], users=taste["users"], items=taste["items"], progress=False, log=lambda *_: None
    )
    export_ranker(run, out)
    return run


@pytest.fixture(scope="module")
def deepfm(taste, tmp_path_factory):
    out = tmp_path_factory.mktemp("deepfm") / "deepfm"
    return _train_and_export(taste, out, model="deepfm"), out


@pytest.fixture(scope="module")
def rating_model(taste, tmp_path_factory):
    out = tmp_path_factory.mktemp("rating") / "rating"
    return _train_and_export(taste, out, model="rating"), out


def torch_scores(run, train_csv: Path, users: list[str], items: list[str]) -> np.ndarray:
    """The trained torch model on (user, item) rows, its inputs built from the trainer's own
    encoded tables and each user's training events (not from the artifact's files)."""
    data, model = run.data, run.fit.model.eval()
    user_row = {u: r for r, u in enumerate(data.user_ids)}
    token = {item: i + FIRST_TOKEN for i, item in enumerate(run.index.item_ids)}
    train = pd.read_csv(train_csv, dtype={"user_id": str, "item_id": str}).sort_values("timestamp", kind="stable")
    length = data.encoder.history_len
    history = np.full((len(users), length), PAD, dtype=np.int64)
    for r, user in enumerate(users):
        tail = [token[i] for i in train.loc[train["user_id"] == user, "item_id"]][-length:]
        history[r, length - len(tail) :] = tail
    rows, tokens = np.array([user_row[u] for u in users]), np.array([token[i] for i in items])
    inputs = {
        "user_cat": data.user_cat[rows],
        "user_num": data.user_num[rows],
        "item_id": tokens,
        "item_cat": data.item_cat[tokens],
        "item_num": data.item_num[tokens],
        "item_multi": data.item_multi[tokens],
        "history": history,
    }
    feeds = {n: torch.from_numpy(v) if v.ndim == 1 or v.shape[1] else None for n, v in inputs.items()}
    with torch.no_grad():
        return model(**{n: feeds.get(n) for n in INPUTS}).numpy()


def pairwise_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (len(pos) * len(neg)))


def test_ranker_on_labelled_rows_matches_the_torch_model(deepfm, taste, tmp_path):
    run, artifact = deepfm
    result = evaluate_artifact(artifact, taste["rated"])
    rated = pd.read_csv(taste["rated"], dtype={"user_id": str, "item_id": str})
    assert result["model_kind"] == "deepfm" and result["protocol"] == "pointwise"
    assert result["label_source"] == "rating >= 4" and result["cases"] == len(rated)
    assert result["skipped_users"] == result["skipped_items"] == result["skipped_missing"] == 0
    labels = (rated["rating"] >= 4).to_numpy(dtype=np.int64)
    scores = torch_scores(run, taste["train"], rated["user_id"].tolist(), rated["item_id"].tolist())
    assert result["positives"] == labels.sum()
    assert result["auc"] == pytest.approx(pairwise_auc(labels, scores), abs=1e-3)
    p = np.clip(scores.astype(np.float64), 1e-7, 1 - 1e-7)
    assert result["logloss"] == pytest.approx(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)), abs=1e-4)
    assert result["accuracy"] == pytest.approx(np.mean((scores >= 0.5) == labels), abs=1e-2)
    assert result["auc"] > 0.7  # the taste is learnable: chance is 0.5
    printed = CliRunner().invoke(
        main, ["evaluate", "--artifact", str(artifact), "--test", str(taste["rated"]), "--json"]
    )
    assert printed.exit_code == 0, printed.output
    assert json.loads(printed.output.splitlines()[-1]) == pytest.approx(result)

    # a label column instead, with rows the artifact cannot score: counted, not fatal
    labelled = rated.assign(label=labels).drop(columns="rating")
    extra = pd.DataFrame(
        {"user_id": ["stranger", "u1", "u2"], "item_id": ["i1", "no-such-item", "i3"], "label": [1, 0, None]}
    )
    pd.concat([labelled, extra]).to_csv(tmp_path / "labelled.csv", index=False)
    again = evaluate_artifact(artifact, tmp_path / "labelled.csv")
    assert again["label_source"] == "label" and again["cases"] == len(rated)
    assert (again["skipped_users"], again["skipped_items"], again["skipped_missing"]) == (1, 1, 1)
    assert again["auc"] == pytest.approx(result["auc"]) and again["logloss"] == pytest.approx(result["logloss"])


def test_ranker_ranks_held_out_positives_like_a_hand_count(deepfm, taste, tmp_path):
    run, artifact = deepfm
    held = pd.read_csv(taste["held_out"], dtype=str)
    full = evaluate_artifact(artifact, taste["held_out"], k=5)
    # by hand: torch scores of every item, the user's training items excluded, ties against the target
    train = pd.read_csv(taste["train"], dtype={"user_id": str, "item_id": str})
    catalogue = list(run.index.item_ids)
    ranks = []
    for user, item in held.itertuples(index=False):
        seen = set(train.loc[train["user_id"] == user, "item_id"])
        if item in seen:
            ranks.append(np.inf)
            continue
        others = [i for i in catalogue if i not in seen and i != item]
        scores = torch_scores(run, taste["train"], [user] * (len(others) + 1), [item, *others])
        ranks.append(float((scores[1:] >= scores[0] - 1e-6).sum()))
    ranks = np.array(ranks)
    hit = ranks < 5
    assert full["protocol"] == "full" and full["cases"] == len(held)
    assert full["hr@5"] == pytest.approx(hit.mean(), abs=1.5 / len(held))
    assert full["ndcg@5"] == pytest.approx(
        np.where(hit, 1 / np.log2(np.where(hit, ranks, 0) + 2), 0).mean(), abs=1.5 / len(held)
    )
    assert 0.0 <= full["coverage@5"] <= 1.0

    sampled = evaluate_artifact(artifact, taste["held_out"], k=5, protocol="sampled", negatives=10)
    assert sampled["negatives"] == 10 and sampled["cases"] == len(held)
    assert {"auc", "hr@5", "ndcg@5"} <= set(sampled) and "coverage@5" not in sampled
    assert sampled["hr@5"] >= full["hr@5"] and 0.5 < sampled["auc"] <= 1.0
    assert evaluate_artifact(artifact, taste["held_out"], k=5, protocol="sampled", negatives=10) == sampled  # seeded
    popular = evaluate_artifact(
        artifact, taste["held_out"], k=5, protocol="sampled", negatives=10, sampling="popularity"
    )
    assert popular["sampling"] == "popularity" and 0.0 <= popular["hr@5"] <= 1.0

    # unknown users get popularity, unknown items are misses: counted, never fatal
    pd.concat([held, pd.DataFrame({"user_id": ["stranger", "u1"], "item_id": ["i1", "no-such-item"]})]).to_csv(
        tmp_path / "odd.csv", index=False
    )
    odd = evaluate_artifact(artifact, tmp_path / "odd.csv", k=5, protocol="sampled", negatives=10)
    assert odd["cases"] == len(held) + 2 and odd["unknown_item_cases"] == 1
    assert odd["unknown_user_cases"] == odd["popularity_fallback_cases"] == 1


def test_rating_model_reports_rmse_and_mae_of_the_torch_model(rating_model, taste):
    run, artifact = rating_model
    result = evaluate_artifact(artifact, taste["rated"])
    rated = pd.read_csv(taste["rated"], dtype={"user_id": str, "item_id": str})
    assert result["task"] == "rating" and result["protocol"] == "pointwise" and result["cases"] == len(rated)
    predicted = torch_scores(run, taste["train"], rated["user_id"].tolist(), rated["item_id"].tolist())
    error = predicted.astype(np.float64) - rated["rating"].to_numpy()
    assert result["rmse"] == pytest.approx(np.sqrt(np.mean(error**2)), abs=1e-4)
    assert result["mae"] == pytest.approx(np.mean(np.abs(error)), abs=1e-4)
    with pytest.raises(ValueError, match="rating column"):
        labelled = Path(taste["rated"]).with_name("labels_only.csv")
        rated.assign(label=1).drop(columns="rating").to_csv(labelled, index=False)
        evaluate_artifact(artifact, labelled)


@pytest.fixture(scope="module")
def two_tower(taste, tmp_path_factory) -> Path:
    from trainer.export.two_tower import train_and_export_two_tower
    from trainer.families.two_tower import RetrievalConfig

    out = tmp_path_factory.mktemp("two_tower") / "two_tower"
    cfg = RetrievalConfig(
        history_len=5, dim=8, field_dim=8, hidden=16, batch_size=64, lr=1e-2, epochs=2, patience=2, seed=0, threads=1
    )
    train_and_export_two_tower(
        cfg, taste["train"], out, users=taste["users"], items=taste["items"], progress=False, log=lambda *_: None
    )
    return out


def test_two_tower_ndcg_matches_onnx_fed_by_hand(two_tower, taste):
    result = evaluate_artifact(two_tower, taste["held_out"], k=10)
    manifest = read_manifest(two_tower)
    assert (result["model_kind"], result["task"], result["protocol"]) == ("two_tower", "next_item", "full")
    # feeds built here from the artifact's raw tables with the schema's encoders
    items = json.loads((two_tower / "item_index.json").read_text())["item_ids"]
    users = {r["user_id"]: r["features"] for r in read_jsonl(two_tower / "users.jsonl")}
    history = {r["user_id"]: r["item_ids"] for r in read_jsonl(two_tower / "histories.jsonl")}
    specs = {s.name: s for s in manifest.schema.user_features}
    held = pd.read_csv(taste["held_out"], dtype=str)
    length = manifest.training["inputs"]["history_len"]
    tokens = [[items.index(i) + FIRST_TOKEN for i in history[u]][-length:] for u in held["user_id"]]
    feeds = {
        "user_cat": np.array(
            [[specs["occupation"].encode_category(users[u]["occupation"])] for u in held["user_id"]], dtype=np.int64
        ),
        "user_num": np.array(
            [[specs["age"].encode_numeric(users[u]["age"])] for u in held["user_id"]], dtype=np.float32
        ),
        "history": np.array([[PAD] * (length - len(t)) + t for t in tokens], dtype=np.int64),
    }
    assert [i.name for i in manifest.inputs] == list(feeds)
    scores = ort.InferenceSession(str(two_tower / "model.onnx")).run(["scores"], feeds)[0]
    gains = []
    for r, (user, item) in enumerate(held.itertuples(index=False)):
        seen = {items.index(i) for i in history[user]}
        target = items.index(item)
        rank = sum(scores[r, j] >= scores[r, target] for j in range(len(items)) if j != target and j not in seen)
        gains.append(0.0 if target in seen or rank >= 10 else 1 / np.log2(rank + 2))
    assert result["ndcg@10"] == pytest.approx(np.mean(gains), abs=1e-6)
    assert result["cases"] == len(held) and result["popularity_fallback_cases"] == 0
