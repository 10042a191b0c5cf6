"""Synthetic data: exact sizes, every item present, power-law popularity, sequential structure,
streamed to Parquet or CSV."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from trainer.synth import SynthConfig, generate, write_synth

CFG = SynthConfig(items=500, users=300, interactions=12_000, chunk_users=64, follow=0.6, successors=4, seed=3)


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
    cfg = SynthConfig(items=2000, users=400, interactions=40_000, cover=False, chunk_users=100, seed=1)
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
    for bad in ({"interactions": 10}, {"items": 10**6}, {"follow": 1.5}):
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
