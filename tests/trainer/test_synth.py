"""Synthetic data: exact sizes, every item present, power-law popularity, sequential structure,
latent topics and tastes, streamed to Parquet or CSV; the sparse-gradient training loss; a
small synthetic artifact with a tuned IVF index."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from trainer.synth import SynthConfig, generate, item_topics, write_synth

CFG = SynthConfig(items=500, users=300, interactions=12_000, chunk_users=64, follow=0.6, successors=4, topics=0, seed=3)


def collect(cfg):
    users, items, times = (np.concatenate(parts) for parts in zip(*generate(cfg)))
    return users, items, times


def test_sizes_coverage_and_time_order():
    users, items, times = collect(CFG)
    assert len(items) == CFG.interactions
    assert set(np.unique(users)) == set(range(CFG.users))
    assert np.bincount(users).min() >= 2
    assert len(np.unique(items)) == CFG.items  # cover: every item occurs
    same_user = users[1:] == users[:-1]
    assert (np.diff(users) >= 0).all() and (np.diff(times)[same_user] > 0).all()


def test_popularity_follows_a_power_law_and_sequences_follow_successors():
    cfg = SynthConfig(items=2000, users=400, interactions=40_000, cover=False, chunk_users=100, topics=0, seed=1)
    users, items, _ = collect(cfg)
    counts = np.sort(np.bincount(items, minlength=cfg.items))[::-1]
    assert counts[:20].sum() > 0.15 * len(items)  # the top 1% of items draws far more than 1%
    # Sequential structure: repeated (item -> next) pairs are far more common than chance.
    same_user = users[1:] == users[:-1]
    pairs = items[:-1][same_user] * cfg.items + items[1:][same_user]
    _, pair_counts = np.unique(pairs, return_counts=True)
    assert pair_counts.max() >= 20


def test_same_seed_same_data_and_bad_settings_refused():
    a, b = collect(CFG), collect(CFG)
    assert all((x == y).all() for x, y in zip(a, b))
    for bad in ({"interactions": 10}, {"items": 10**6}, {"follow": 1.5}, {"taste": -0.1}, {"topics": 501}):
        with pytest.raises(ValueError):
            SynthConfig(**{**CFG.__dict__, **bad}).check()


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_written_tables_stream_to_disk(tmp_path, fmt):
    summary = write_synth(CFG, tmp_path, fmt=fmt, log=lambda *_: None)
    assert summary["rows"] == CFG.interactions
    path = tmp_path / f"interactions.{fmt}"
    df = pd.read_parquet(path) if fmt == "parquet" else pd.read_csv(path, dtype={"user_id": str, "item_id": str})
    assert list(df.columns) == ["user_id", "item_id", "timestamp"] and len(df) == CFG.interactions
    assert df["user_id"].str.startswith("u").all() and df["item_id"].nunique() == CFG.items
    assert (tmp_path / "synth.json").is_file()


def test_topics_are_written_as_an_item_category(tmp_path):
    cfg = SynthConfig(items=200, users=50, interactions=2_000, topics=7, chunk_users=20, seed=4)
    summary = write_synth(cfg, tmp_path, log=lambda *_: None)
    items = pd.read_parquet(tmp_path / summary["items_file"])
    assert list(items.columns) == ["item_id", "category"] and len(items) == cfg.items
    assert items["category"].tolist() == [f"t{t}" for t in item_topics(cfg)] and items["category"].nunique() == 7


def test_topics_give_users_tastes_without_clustering_everything():
    cfg = SynthConfig(
        items=4000, users=500, interactions=60_000, topics=40, user_topics=3, taste=0.7, chunk_users=128, seed=2
    )
    users, items, _ = collect(cfg)
    topic = item_topics(cfg)
    assert topic.shape == (cfg.items,) and set(np.unique(topic)) == set(range(cfg.topics))
    assert len(np.unique(items)) >= 0.97 * cfg.items  # per-topic coverage walk: nearly every item
    # Each user's 3 most frequent topics hold far more than 3 / 40 of their events, but not all.
    per_user = np.zeros((cfg.users, cfg.topics))
    np.add.at(per_user, (users, topic[items]), 1)
    top3 = np.sort(per_user, axis=1)[:, -3:].sum() / len(items)
    assert 0.4 < top3 < 0.9
    same_user = users[1:] == users[:-1]
    same_topic = (topic[items[1:]] == topic[items[:-1]])[same_user].mean()
    sizes = np.bincount(topic, minlength=cfg.topics) / cfg.items
    assert (sizes**2).sum() * 3 < same_topic < 0.9  # far above chance, far from a closed cluster


def test_sparse_item_table_gives_the_dense_loss_and_gradients():
    import torch

    from trainer.families.losses import NegativeSampler, next_item_loss
    from trainer.models import SASRec, SASRecConfig

    torch.manual_seed(0)
    model = SASRec(SASRecConfig(num_items=50, max_len=6, hidden=8, heads=2, layers=1, inner=16, dropout=0.0))
    sampler = NegativeSampler(torch.arange(50) + 1, "popularity")
    x, y = torch.randint(1, 51, (4, 6)), torch.randint(1, 51, (4, 6))
    x[0, :3] = y[0, :3] = 0
    grads = []
    for sparse in (True, False):
        model.zero_grad()
        model.item_emb.sparse = sparse
        torch.manual_seed(1)  # same negatives for both
        loss = next_item_loss(model, x, y, loss="sampled_softmax", sampler=sampler, negatives=20, in_batch=5)
        loss.backward()
        grad = model.item_emb.weight.grad
        assert grad.is_sparse == sparse
        grads.append((loss.item(), grad.to_dense() if sparse else grad))
    assert abs(grads[0][0] - grads[1][0]) < 1e-5
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-4, atol=1e-6)


def test_synthetic_artifact_learns_and_records_its_tuned_index(tmp_path):
    import json

    from trainer.synth import train_synth_artifact

    cfg = SynthConfig(items=3000, users=400, interactions=16_000, topics=30, chunk_users=200, seed=0)
    manifest = train_synth_artifact(
        cfg,
        tmp_path / "a",
        steps=60,
        batch_size=64,
        hidden=16,
        max_len=10,
        negatives=64,
        valid_users=200,
        export_users=150,
        ann="on",
        target_recall=0.9,
        recall_users=100,
        threads=1,
        log=lambda *_: None,
    )
    valid = manifest.metrics["valid"]
    assert valid["users"] == 200 and 0 <= valid["hr@10"] <= 1 and "popularity_hr@10" in valid
    spec = json.loads((tmp_path / "a" / "retrieval.json").read_text())
    assert spec["backend"] == "norm-pruned" and spec["metrics"]["user_histories"] == 100
    sweep = spec["metrics"]["alpha_sweep"]
    assert sweep["1.0"] == 1.0  # alpha 1 is exact
    chosen = spec["params"]["alpha"]
    assert sweep[str(chosen)] >= 0.9 and all(r >= 0.9 for a, r in sweep.items() if float(a) >= chosen)
    assert chosen == 0.5 or list(sweep.values())[-1] < 0.9  # the fastest cap that still reaches the target
