"""Classic baselines: closed forms checked by hand, selection on validation, ONNX parity."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recsys.schema import FIRST_TOKEN, PAD
from trainer.export.onnx import export_onnx, parity_check
from trainer.families.classic import ease_weights, fit_classic, interaction_matrix, knn_neighbours
from trainer.families.next_item import TrainConfig
from trainer.models.bpr_mf import BPRMF, BPRMFConfig

NUM_ITEMS = 40


def ring_sequences(users: int = 200, seed: int = 0) -> list[np.ndarray]:
    """Users walk a ring of items: item t is followed by item t + 1."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(users):
        start, length = rng.integers(0, NUM_ITEMS), rng.integers(4, 10)
        out.append(((np.arange(start, start + length) % NUM_ITEMS) + FIRST_TOKEN).astype(np.int64))
    return out


def config(model: str, **changes) -> TrainConfig:
    cfg = dataclasses.replace(TrainConfig(), max_len=8, **changes)
    cfg = dataclasses.replace(cfg, model=model)
    return cfg


def test_interaction_matrix_counts_repeats_once_and_drops_oov():
    x = interaction_matrix([np.array([2, 2, 3]), np.array([1, 4])], 3)
    assert x.toarray().tolist() == [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]


def test_ease_closed_form_matches_the_ridge_solution_with_a_zero_diagonal():
    x = np.array([[1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 1, 1]], dtype=float)
    gram, l2 = x.T @ x, 0.5
    b = ease_weights(gram, l2)
    assert np.allclose(np.diag(b), 0.0)
    # Column j is the ridge regression of item j on the other items (Steck, 2019).
    for j in range(3):
        others = [i for i in range(3) if i != j]
        a = x[:, others]
        w = np.linalg.solve(a.T @ a + l2 * np.eye(2), a.T @ x[:, j])
        assert np.allclose(b[others, j], w)


def test_itemknn_similarity_is_shrunk_cosine_and_excludes_the_item_itself():
    x = sp.csr_matrix(np.array([[1, 1, 0], [1, 0, 1], [1, 1, 0]], dtype=float))
    cols, sims = knn_neighbours(x, k=2, shrink=1.0)
    # items 0 and 1 share users 0 and 2: 2 / (sqrt(3) * sqrt(2) + 1)
    row0 = dict(zip(cols[0].tolist(), sims[0].tolist(), strict=True))
    assert 0 not in row0
    assert row0[1] == pytest.approx(2 / (np.sqrt(3) * np.sqrt(2) + 1), rel=1e-6)
    assert row0[2] == pytest.approx(1 / (np.sqrt(3) * 1 + 1), rel=1e-6)


@pytest.mark.parametrize("model", ["itemknn", "ease"])
def test_learns_the_ring_and_picks_its_setting_on_validation(model):
    result = fit_classic(config(model), ring_sequences(), NUM_ITEMS, progress=False)
    tried = [row for row in result.history]
    assert len(tried) > 1  # a grid was searched
    best = max(row["ndcg@10"] for row in tried)
    assert result.best_metrics["ndcg@10"] == best
    assert best > 0.5  # the next item on the ring is learnt (popularity alone is ~0.1 here)
    seq = torch.tensor([[PAD, PAD, 5, 6, 7, 8, 9, 10]])
    scores = result.model(seq)[0]
    scores[seq[0, 2:] - FIRST_TOKEN] = -torch.inf  # seen items left out, as served
    assert int(scores.argmax()) + FIRST_TOKEN in (4, 11)  # a neighbour on the ring of the window's ends


def test_a_given_setting_is_not_searched():
    result = fit_classic(config("ease", l2=10.0), ring_sequences(), NUM_ITEMS, progress=False)
    assert [row["l2"] for row in result.history] == [10.0]


def test_popularity_ranks_by_training_counts():
    seqs = [np.array([2, 3]), np.array([3, 4]), np.array([3, 4, 5])]
    result = fit_classic(config("pop"), seqs, 4, progress=False)
    scores = result.model(torch.tensor([[PAD, 2], [4, 5]])).numpy()
    assert np.array_equal(scores[0], scores[1])
    assert scores[0].argmax() == 1  # token 3: in every training sequence


def test_ease_refuses_a_catalogue_too_large_for_its_matrices():
    with pytest.raises(ValueError, match="itemknn"):
        fit_classic(config("ease"), [np.array([2, 3, 4])], 40_000, progress=False)


@pytest.mark.parametrize("model", ["pop", "itemknn", "ease"])
def test_onnx_matches_torch(model, tmp_path):
    result = fit_classic(config(model), ring_sequences(), NUM_ITEMS, progress=False)
    export_onnx(result.model, tmp_path / "model.onnx", 8, NUM_ITEMS)
    assert parity_check(result.model, tmp_path / "model.onnx", 8, NUM_ITEMS) < 1e-4


def test_bpr_mf_user_is_the_running_mean_of_the_history_factors(tmp_path):
    model = BPRMF(BPRMFConfig(num_items=NUM_ITEMS, hidden=4)).eval()
    seq = torch.tensor([[PAD, 3, 5]])
    hidden = model.encode(seq)
    factors = model.user_part.weight
    assert torch.allclose(hidden[0, 1], factors[3])
    assert torch.allclose(hidden[0, 2], (factors[3] + factors[5]) / 2)
    export_onnx(model, tmp_path / "model.onnx", 8, NUM_ITEMS)
    assert parity_check(model, tmp_path / "model.onnx", 8, NUM_ITEMS) < 1e-4


def test_classic_models_train_through_the_next_item_fit_and_bpr_mf_picks_its_own_loss():
    from trainer.families.next_item import fit

    result = fit(config("ease"), ring_sequences(), NUM_ITEMS, progress=False)
    assert result.best_metrics["ndcg@10"] > 0.5
    cfg = dataclasses.replace(TrainConfig(), model="bpr_mf")
    assert cfg.resolved(NUM_ITEMS).loss == "bpr"
    assert dataclasses.replace(cfg, loss="ce").resolved(NUM_ITEMS).loss == "ce"
