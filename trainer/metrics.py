"""Ranking metrics over the rank of one held-out item per case (numpy only, no torch).

A rank is 0-based: 0 means the held-out item scored best among the ranked items. Ties count
against the held-out item (pessimistic). Items excluded from the ranking (already seen) do not
take part; a held-out item that is itself excluded, or unknown, gets rank `inf`: a miss.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "HEAD_SHARE",
    "catalogue_metrics",
    "gini",
    "long_tail_metrics",
    "rank_of_targets",
    "ranking_metrics",
    "tail_items",
    "top_k",
]

# The head: the most popular 20 % of the catalogue by training interactions; the rest is the tail.
HEAD_SHARE = 0.2


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


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of non-negative counts (0 = all equal, -> 1 = all on one item).

    Over every entry given, zeros included: pass one count per catalogue item, so items never
    recommended count as zeros. All-zero or empty input -> 0.
    """
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n, total = len(x), x.sum()
    if n == 0 or total <= 0:
        return 0.0
    i = np.arange(1, n + 1)
    return float(((2 * i - n - 1) * x).sum() / (n * total))


def tail_items(popularity: np.ndarray, head_share: float = HEAD_SHARE) -> np.ndarray:
    """(N,) bool: True for tail items, i.e. outside the ceil(head_share * N) most popular by
    training interactions (ties broken by column order, as in the artifact's item index,
    which lists items most popular first)."""
    popularity = np.asarray(popularity, dtype=np.float64)
    n_head = int(np.ceil(head_share * len(popularity)))
    order = np.argsort(-popularity, kind="stable")
    tail = np.ones(len(popularity), dtype=bool)
    tail[order[:n_head]] = False
    return tail


def long_tail_metrics(
    top: np.ndarray,
    popularity: np.ndarray,
    ranks: np.ndarray,
    targets: np.ndarray,
    k: int,
    head_share: float = HEAD_SHARE,
) -> dict[str, float]:
    """Exposure and accuracy on the long tail.

    top (U, k) recommended columns per case; popularity (N,) training counts; ranks (U,) as from
    `rank_of_targets`; targets (U,) target columns, -1 for a target outside the catalogue.
    - gini@k: Gini of how often each catalogue item is recommended (zeros included)
    - tail_share@k: share of recommended slots that hold tail items
    - tail_recall@k: HR@k over the cases whose target is a tail item (catalogue items only);
      tail_cases: how many such cases
    """
    top, ranks, targets = np.asarray(top), np.asarray(ranks, dtype=np.float64), np.asarray(targets)
    tail = tail_items(popularity, head_share)
    counts = np.bincount(top.ravel(), minlength=len(tail)) if top.size else np.zeros(len(tail))
    on_tail = (targets >= 0) & tail[np.clip(targets, 0, None)] if len(targets) else np.zeros(0, dtype=bool)
    return {
        f"gini@{k}": gini(counts),
        f"tail_share@{k}": float(tail[top].mean()) if top.size else 0.0,
        f"tail_recall@{k}": float((ranks[on_tail] < k).mean()) if on_tail.any() else 0.0,
        "tail_cases": int(on_tail.sum()),
    }
