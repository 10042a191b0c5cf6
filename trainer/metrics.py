"""Ranking metrics over the rank of one held-out item per case (numpy only, no torch).

A rank is 0-based: 0 means the held-out item scored best among the ranked items. Ties count
against the held-out item (pessimistic). Items excluded from the ranking (already seen) do not
take part; a held-out item that is itself excluded, or unknown, gets rank `inf`: a miss.
"""

from __future__ import annotations

import numpy as np

__all__ = ["catalogue_metrics", "rank_of_targets", "ranking_metrics", "top_k"]


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


def ranking_metrics(ranks: np.ndarray, k: int, candidates: np.ndarray | None = None) -> dict[str, float]:
    """Means over cases of HR@k (= Recall@k with one held-out item), NDCG@k, MRR@k,
    Precision@k and MAP@k (with one relevant item, AP@k = 1/(rank+1) on a hit, so MAP@k = MRR@k);
    with `candidates` (U,), the number of other items each target was ranked against, also AUC
    (the share of those items scored below the target; a miss counts 0)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        return {f"hr@{k}": 0.0, f"ndcg@{k}": 0.0, f"mrr@{k}": 0.0, f"precision@{k}": 0.0, f"map@{k}": 0.0}
    hit = ranks < k
    safe = np.where(hit, ranks, 0.0)
    rr = np.where(hit, 1.0 / (safe + 1.0), 0.0)
    out = {
        f"hr@{k}": float(hit.mean()),
        f"ndcg@{k}": float(np.where(hit, 1.0 / np.log2(safe + 2.0), 0.0).mean()),
        f"mrr@{k}": float(rr.mean()),
        f"precision@{k}": float(hit.mean() / k),
        f"map@{k}": float(rr.mean()),
    }
    if candidates is not None:
        candidates = np.asarray(candidates, dtype=np.float64)
        finite = np.isfinite(ranks) & (candidates > 0)
        auc = np.zeros_like(ranks)
        auc[finite] = 1.0 - ranks[finite] / candidates[finite]
        out["auc"] = float(auc.mean())
    return out


def top_k(scores: np.ndarray, k: int, excluded: np.ndarray | None = None) -> np.ndarray:
    """(U, N) -> (U, k) column indices of the k best not-excluded items, best first."""
    scores = np.array(scores, dtype=np.float64, copy=True)
    if excluded is not None:
        scores[excluded] = -np.inf
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def catalogue_metrics(top: np.ndarray, popularity: np.ndarray, k: int) -> dict[str, float]:
    """Coverage@k (share of the catalogue in any list) and the mean training popularity of
    recommended items, relative to the mean item's (1.0 = as popular as an average item)."""
    popularity = np.asarray(popularity, dtype=np.float64)
    return {
        f"coverage@{k}": float(len(np.unique(top)) / len(popularity)) if len(popularity) else 0.0,
        f"mean_popularity@{k}": float(popularity[top].mean() / max(popularity.mean(), 1e-12)) if top.size else 0.0,
    }
