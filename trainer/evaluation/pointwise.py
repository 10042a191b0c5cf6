"""Pointwise metrics of feature-based models on labelled rows (trainer/pointwise_metrics.py).

A ranker (task "rank") is scored against a `label` column (0/1) or, without one, against
rating >= the threshold it was trained with; the rating model against the `rating` column.
Each row is one (user, item) prediction, the user's history and features as the server reads
them. Rows the artifact cannot score are left out and counted: `skipped_users` (a user with
neither a history nor features), `skipped_items` (an item outside the item index) and
`skipped_missing` (no target value); a row may count under more than one.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from trainer.evaluation.scorers import PairScorer
from trainer.evaluation.tables import ArtifactTables
from trainer.pointwise_metrics import classification_metrics, rating_metrics

__all__ = ["classify", "regress"]


def classify(tables: ArtifactTables, scorer: PairScorer, test: pd.DataFrame, threshold: float | None) -> dict:
    """AUC, LogLoss and accuracy (at 0.5) of the predicted probabilities; labels from test's
    `label` column, or rating >= `threshold` when it has none (threshold then required)."""
    if "label" in test.columns:
        target, source = test["label"], "label"
    else:
        target, source = (test["rating"] >= threshold).astype(np.float64).where(test["rating"].notna()), "rating"
    known = target.dropna()
    if not known.isin((0.0, 1.0)).all():
        raise ValueError("the label column must hold 0 or 1")
    result, rows, scores = _score(tables, scorer, test, target)
    labels = target.to_numpy()[rows]
    result["label_source"] = "label" if source == "label" else f"rating >= {threshold:g}"
    result["positives"] = int(labels.sum())
    if len(rows):
        result.update(classification_metrics(labels, scores))
    return result


def regress(tables: ArtifactTables, scorer: PairScorer, test: pd.DataFrame) -> dict:
    """RMSE and MAE of the predicted ratings against test's `rating` column."""
    result, rows, scores = _score(tables, scorer, test, test["rating"])
    if len(rows):
        result.update(rating_metrics(test["rating"].to_numpy()[rows], scores))
    return result


def _score(
    tables: ArtifactTables, scorer: PairScorer, test: pd.DataFrame, target: pd.Series
) -> tuple[dict, np.ndarray, np.ndarray]:
    """The counts, the positions of the rows that can be scored, and their scores."""
    user_known = test["user_id"].isin(tables.known_users).to_numpy()
    item_known = test["item_id"].isin(tables.token).to_numpy()
    present = target.notna().to_numpy()
    rows = np.flatnonzero(user_known & item_known & present)
    users = test["user_id"].to_numpy()[rows].tolist()
    tokens = np.array([tables.token[i] for i in test["item_id"].to_numpy()[rows]], dtype=np.int64)
    scores = scorer.pair_scores(users, tokens) if len(rows) else np.zeros(0, dtype=np.float32)
    result = {
        "users": len(set(users)),
        "cases": len(rows),
        "protocol": "pointwise",
        "skipped_users": int((~user_known).sum()),
        "skipped_items": int((~item_known).sum()),
        "skipped_missing": int((~present).sum()),
    }
    return result, rows, scores
