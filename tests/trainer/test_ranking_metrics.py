"""Ranking and rating metrics on tiny arrays worked out by hand."""

import math

import numpy as np
import pytest

from trainer.pointwise_metrics import accuracy, auc, classification_metrics, log_loss, mae, rating_metrics, rmse


def test_auc_counts_ordered_pairs():
    # positives 0.8, 0.4; negatives 0.5, 0.1: pairs (0.8>0.5, 0.8>0.1, 0.4<0.5, 0.4>0.1) -> 3/4
    assert auc([1, 0, 1, 0], [0.8, 0.5, 0.4, 0.1]) == pytest.approx(0.75)


def test_auc_ties_count_one_half():
    # one positive and one negative at 0.5, one negative at 0.2: (0.5 + 1) / 2
    assert auc([1, 0, 0], [0.5, 0.5, 0.2]) == pytest.approx(0.75)
    assert auc([1, 1, 0, 0], [0.3, 0.3, 0.3, 0.3]) == pytest.approx(0.5)


def test_auc_extremes_and_one_class():
    assert auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert math.isnan(auc([1, 1], [0.2, 0.3]))


def test_auc_matches_brute_force_on_random_scores():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = rng.integers(0, 10, 200) / 10  # many ties
    pos, neg = s[y == 1], s[y == 0]
    brute = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
    assert auc(y, s) == pytest.approx(brute)


def test_log_loss_by_hand_and_clipping():
    # -(ln 0.8 + ln 0.75) / 2 = (0.22314 + 0.28768) / 2
    assert log_loss([1, 0], [0.8, 0.25]) == pytest.approx(0.255413, abs=1e-6)
    assert log_loss([1], [0.0]) == pytest.approx(-math.log(1e-7))


def test_accuracy_threshold_is_inclusive():
    assert accuracy([1, 0, 1, 0], [0.5, 0.49, 0.2, 0.9]) == 0.5


def test_rmse_and_mae_by_hand():
    # errors 1, -2, 0, 1: RMSE sqrt(6/4), MAE 4/4
    assert rmse([3, 4, 5, 1], [4, 2, 5, 2]) == pytest.approx(math.sqrt(1.5))
    assert mae([3, 4, 5, 1], [4, 2, 5, 2]) == 1.0
    assert rating_metrics([1, 2], [1, 2]) == {"rmse": 0.0, "mae": 0.0}


def test_classification_metrics_names():
    assert set(classification_metrics([1, 0], [0.9, 0.1])) == {"auc", "logloss", "accuracy"}
