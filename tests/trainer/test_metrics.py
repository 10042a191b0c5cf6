import math

import numpy as np
import pytest

from trainer.metrics import rank_of_targets, ranking_metrics


def test_rank_counts_items_scored_at_least_as_high():
    scores = np.array([[0.1, 0.9, 0.5, 0.5], [3.0, 2.0, 1.0, 0.0]])
    ranks = rank_of_targets(scores, np.array([2, 0]))
    # row 0: 0.9 beats it and the tie at 0.5 counts against it -> rank 2; row 1: best -> 0
    assert ranks.tolist() == [2.0, 0.0]


def test_excluded_items_do_not_count_and_an_excluded_target_is_a_miss():
    scores = np.array([[0.9, 0.8, 0.1], [0.9, 0.8, 0.1]])
    excluded = np.array([[True, False, False], [False, True, False]])
    ranks = rank_of_targets(scores, np.array([1, 1]), excluded)
    assert ranks[0] == 0.0
    assert math.isinf(ranks[1])


def test_metrics_on_hand_computed_ranks():
    ranks = np.array([0.0, 1.0, 4.0, 10.0, np.inf])
    m = ranking_metrics(ranks, k=5)
    assert m["hr@5"] == pytest.approx(3 / 5)
    assert m["ndcg@5"] == pytest.approx((1.0 + 1 / math.log2(3) + 1 / math.log2(6)) / 5)
    assert m["mrr@5"] == pytest.approx((1.0 + 1 / 2 + 1 / 5) / 5)


def test_rank_at_cutoff_is_a_miss():
    assert ranking_metrics(np.array([10.0]), k=10)["hr@10"] == 0.0
    assert ranking_metrics(np.array([9.0]), k=10)["hr@10"] == 1.0


def test_empty_ranks_give_zeros():
    assert ranking_metrics(np.array([]), k=10) == {"hr@10": 0.0, "ndcg@10": 0.0, "mrr@10": 0.0}
