"""Ensembles: the combined graph is the weighted sum of its members, members are trained apart
with their own settings and seeds, bad member settings are refused by name, and the artifact
records its members. (Serving, exactly and through its ANN index: tests/inference_server/test_ann.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys.artifact import read_manifest
from recsys.schema import FIRST_TOKEN, PAD
from trainer.families.next_item import TrainConfig, member_configs
from trainer.models import MODELS
from trainer.models.ensemble import Ensemble

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
        expected = sum(w * m(seq[:, -m.cfg.max_len :]) for m, w in zip(members, weights))
        np.testing.assert_allclose(ensemble(seq).numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
        # encode . output_embeddings + bias is the same score: what the ANN user encoder relies on
        hidden = ensemble.encode(seq)[:, -1, :]
        again = hidden @ ensemble.output_embeddings().T + ensemble.output_bias()
        np.testing.assert_allclose(again.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_members_inherit_the_ensemble_settings_and_get_their_own_seeds():
    cfg = TrainConfig(
        model="ensemble",
        seed=2,
        max_len=20,
        dropout=0.4,
        members=({"model": "sasrec", "max_len": 8}, {"model": "gru4rec", "dropout": 0.1}),
    )
    sasrec, gru = member_configs(cfg)
    assert (sasrec.model, sasrec.max_len, sasrec.dropout, sasrec.seed) == ("sasrec", 8, 0.4, 4)
    assert (gru.model, gru.max_len, gru.dropout, gru.seed) == ("gru4rec", 20, 0.1, 5)
    assert sasrec.members == () and gru.members == ()


@pytest.mark.parametrize(
    "members, message",
    [
        ((), "needs `members`"),
        (({"dropout": 0.1},), "at least a `model` key"),
        (({"model": "ensemble"},), "not ensembles"),
        (({"model": "content_sasrec"},), "not ensembles, content models"),
        (({"model": "sasrec", "hidden_size": 8},), "unknown setting"),
        (({"model": "sasrec", "seed": 3},), "take their seeds from the ensemble"),
        (({"model": "sasrec", "max_len": 99},), "raise the ensemble's max_len"),
        (({"model": "sasrec", "lr": -1},), "lr must be > 0"),
        (({"model": "sasrec", "max_len": 20}, {"model": "gru4rec", "max_len": 30}), "must be its longest member's"),
    ],
)
def test_bad_members_are_refused_by_name(members, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(model="ensemble", max_len=50, members=members).check()


def test_members_only_with_model_ensemble():
    with pytest.raises(ValueError, match="for model ensemble only"):
        TrainConfig(model="sasrec", members=({"model": "sasrec"},)).check()


def test_ensemble_artifact_records_its_members(ensemble_artifact):
    manifest = read_manifest(ensemble_artifact)
    assert manifest.model_kind == "ensemble" and manifest.max_history == 10
    members = manifest.training["members"]
    assert [(m["model"], m["seed"]) for m in members] == [("sasrec", 0), ("gru4rec", 1)]
    assert all(m["weight"] > 0 and 0 <= m["ndcg@10"] <= 1 for m in members)
    assert "valid_ndcg@10" in manifest.metrics and manifest.metrics["export_parity_max_abs_diff"] < 1e-3
    assert (ensemble_artifact / "curves.png").stat().st_size > 0
