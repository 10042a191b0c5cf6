import math

import numpy as np
import pytest

from trainer.metrics import catalogue_metrics, rank_of_targets, ranking_metrics, top_k


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
    assert all(v == 0.0 for v in ranking_metrics(np.array([]), k=10).values())


def test_precision_map_and_auc_by_hand():
    m = ranking_metrics(np.array([0.0, 3.0, np.inf]), k=2, candidates=np.array([4, 4, 4]))
    assert m["precision@2"] == pytest.approx(1 / 3 / 2)
    assert m["map@2"] == pytest.approx(1 / 3)
    # AUC: first target beats all 4 others (1.0), second beats 1 of 4 (0.25), third is a miss (0)
    assert m["auc"] == pytest.approx((1.0 + 0.25 + 0.0) / 3)


def test_top_k_skips_excluded_and_orders_best_first():
    scores = np.array([[0.1, 0.9, 0.5, 0.7]])
    assert top_k(scores, 2).tolist() == [[1, 3]]
    assert top_k(scores, 2, np.array([[False, True, False, False]])).tolist() == [[3, 2]]


def test_catalogue_coverage_and_popularity():
    top = np.array([[0, 1], [0, 2]])
    m = catalogue_metrics(top, np.array([10.0, 2.0, 0.0, 4.0]), k=2)
    assert m["coverage@2"] == pytest.approx(3 / 4)
    assert m["mean_popularity@2"] == pytest.approx(((10 + 2 + 10 + 0) / 4) / 4.0)
