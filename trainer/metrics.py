"""Ranking metrics over the rank of one held-out item per user (numpy only, no torch).

A rank is 0-based: 0 means the held-out item scored best among the ranked items. Ties count
against the held-out item (pessimistic). Items excluded from the ranking (already seen) do not
take part; a held-out item that is itself excluded gets rank `inf` and counts as a miss.
"""

from __future__ import annotations

import numpy as np

__all__ = ["rank_of_targets", "ranking_metrics"]


def rank_of_targets(scores: np.ndarray, targets: np.ndarray, excluded: np.ndarray | None = None) -> np.ndarray:
    """scores (U, N) float, targets (U,) column indices, excluded (U, N) bool -> ranks (U,) float.

    Rank = number of other, not excluded items whose score is >= the target's.
    """
    scores = np.asarray(scores, dtype=np.float64)
    rows = np.arange(len(targets))
    target_scores = scores[rows, targets]
    ahead = scores >= target_scores[:, None]
    ahead[rows, targets] = False
    if excluded is not None:
        ahead &= ~excluded
    ranks = ahead.sum(axis=1).astype(np.float64)
    if excluded is not None:
        ranks[excluded[rows, targets]] = np.inf
    return ranks


def ranking_metrics(ranks: np.ndarray, k: int) -> dict[str, float]:
    """HR@k (= Recall@k with one held-out item), NDCG@k and MRR@k, averaged over users."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        return {f"hr@{k}": 0.0, f"ndcg@{k}": 0.0, f"mrr@{k}": 0.0}
    hit = ranks < k
    safe = np.where(hit, ranks, 0.0)
    return {
        f"hr@{k}": float(hit.mean()),
        f"ndcg@{k}": float(np.where(hit, 1.0 / np.log2(safe + 2.0), 0.0).mean()),
        f"mrr@{k}": float(np.where(hit, 1.0 / (safe + 1.0), 0.0).mean()),
    }
