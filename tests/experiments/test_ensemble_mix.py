"""The offline metric of experiments/ensemble_mix.py against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from experiments.ensemble_mix import ndcg


def test_ndcg_ranks_unseen_items_and_counts_misses_as_zero():
    scores = np.array([[0.9, 0.8, 0.1, 0.5], [0.2, 0.1, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4]], dtype=np.float32)
    seen = np.array([[True, False, False, False], [False] * 4, [False] * 4])
    targets = np.array([3, 0, -1])  # user 0: 2nd once item 0 is excluded; user 1: 3rd; user 2: no target
    user0, user1 = 1 / math.log2(2 + 1), 1 / math.log2(3 + 1)
    assert ndcg(scores, seen, targets, k=10) == pytest.approx((user0 + user1) / 3)
    assert ndcg(scores, seen, targets, k=2) == pytest.approx(user0 / 3)  # user 1's 3rd place is past k
    seen[0, 3] = True  # a target already seen cannot be recommended
    assert ndcg(scores, seen, targets, k=10) == pytest.approx(user1 / 3)
