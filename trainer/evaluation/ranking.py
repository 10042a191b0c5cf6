"""Held-out items ranked by any scorer (scorers.py), as the server would rank them.

One case per (user_id, item_id) row. Items in the user's history are excluded; a held-out
item that is itself in the history, or outside the item index, counts as a miss (rank inf);
users the server would answer with popularity (unknown, or without one indexed item for a
model that reads the history) are ranked by popularity. protocol "full" ranks the target
against every other unseen item; "sampled" against `negatives` unseen items drawn uniformly or
by training popularity from a seeded generator.

Catalogue and long-tail exposure (coverage, Gini, tail share and recall) need each user's
top k over the whole catalogue: they are reported unless a feature-based model (which scores
only the candidates it is given) ranks under the sampled protocol.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from recsys.schema import FIRST_TOKEN
from trainer.evaluation.scorers import Scorer
from trainer.evaluation.tables import ArtifactTables
from trainer.metrics import (
    HEAD_SHARE,
    catalogue_metrics,
    long_tail_metrics,
    rank_of_targets,
    ranking_metrics,
    top_k,
)

__all__ = ["rank_held_out", "sampled_only"]


def rank_held_out(
    tables: ArtifactTables,
    scorer: Scorer,
    test: pd.DataFrame,
    *,
    k: int,
    protocol: str,
    negatives: int,
    sampling: str,
    seed: int,
    batch: int,
) -> dict:
    """Ranking metrics (trainer/metrics.py) of `scorer` on test's user_id,item_id rows."""
    token, popularity, n = tables.token, tables.popularity, tables.manifest.num_items
    rng = np.random.default_rng(seed)
    draw = popularity.astype(np.float64) + 1e-9 if sampling == "popularity" else np.ones(n)
    whole_catalogue = protocol == "full" or scorer.whole_catalogue
    rows = list(test[["user_id", "item_id"]].itertuples(index=False))
    ranks, candidates = np.empty(len(rows)), np.empty(len(rows))
    tops, fallback = [], 0
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        excluded = np.zeros((len(chunk), n), dtype=bool)  # (B, N) seen items
        model_rows, model_users, popular_rows = [], [], []
        for r, (user, _) in enumerate(chunk):
            tokens = tables.history(user)
            known = tokens[tokens >= FIRST_TOKEN]
            excluded[r, known - FIRST_TOKEN] = True
            if user not in tables.known_users or (scorer.needs_history and not len(known)):
                popular_rows.append(r)
            else:
                model_rows.append(r)
                model_users.append(user)
        fallback += len(popular_rows)
        targets = np.array([token.get(item, FIRST_TOKEN) - FIRST_TOKEN for _, item in chunk])
        ranked = sampled_only(excluded, targets, negatives, draw, rng) if protocol == "sampled" else excluded
        scores = np.empty((len(chunk), n), dtype=np.float32)  # (B, N)
        scores[popular_rows] = popularity
        if model_rows:
            scores[model_rows] = scorer.scores(model_users, ~ranked[model_rows])
        if whole_catalogue:
            tops.append(top_k(scores, k, excluded))
        chunk_ranks = rank_of_targets(scores, targets, ranked)
        chunk_ranks[[item not in token for _, item in chunk]] = np.inf
        ranks[start : start + len(chunk)] = chunk_ranks
        candidates[start : start + len(chunk)] = (~ranked).sum(axis=1) - 1
    result: dict = {"users": int(test["user_id"].nunique()), "cases": len(rows), "protocol": protocol}
    if protocol == "sampled":
        result["negatives"], result["sampling"] = negatives, sampling
    result.update(ranking_metrics(ranks, k, candidates))
    if whole_catalogue:
        top = np.concatenate(tops)
        target_cols = np.array([token[item] - FIRST_TOKEN if item in token else -1 for _, item in rows])
        result.update(catalogue_metrics(top, popularity, k))
        result.update(long_tail_metrics(top, popularity, ranks, target_cols, k))
        result["tail_definition"] = f"items outside the most popular {HEAD_SHARE:.0%} by training interactions"
    result["popularity_fallback_cases"] = fallback
    result["unknown_user_cases"] = int((~test["user_id"].isin(tables.known_users)).sum())
    result["unknown_item_cases"] = int((~test["item_id"].isin(token)).sum())
    return result


def sampled_only(excluded: np.ndarray, targets: np.ndarray, negatives: int, draw: np.ndarray, rng) -> np.ndarray:
    """Excludes everything but the target and `negatives` sampled unseen items, per row."""
    keep = np.ones_like(excluded)
    for r in range(len(targets)):
        allowed = ~excluded[r]
        allowed[targets[r]] = False
        pool = np.flatnonzero(allowed)
        if len(pool):
            p = draw[pool] / draw[pool].sum()
            chosen = rng.choice(pool, size=min(negatives, len(pool)), replace=False, p=p)
            keep[r, chosen] = False
        keep[r, targets[r]] = excluded[r, targets[r]]
    return keep
