"""Pointwise metrics of rankers (AUC, LogLoss, accuracy) and rating models (RMSE, MAE).

numpy only. Labels are 0/1 (rankers) or ratings; scores are probabilities or predictions.
"""

from __future__ import annotations

import numpy as np

__all__ = ["accuracy", "auc", "classification_metrics", "log_loss", "mae", "rating_metrics", "rmse"]

EPS = 1e-7  # probabilities are clipped to [EPS, 1 - EPS] in log_loss


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: the probability that a random positive scores above a random
    negative, ties counting one half (Mann-Whitney U with average ranks). NaN without both
    classes."""
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # average 1-based rank over each run of equal scores
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    average = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks[order] = np.repeat(average, ends - starts)
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean binary cross-entropy (natural log) with probabilities clipped to [EPS, 1 - EPS]."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.clip(np.asarray(probs, dtype=np.float64).ravel(), EPS, 1.0 - EPS)
    return float(-(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)).mean())


def accuracy(labels: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> float:
    """Share of cases where (prob >= threshold) equals the label."""
    y = np.asarray(labels).astype(bool).ravel()
    return float(((np.asarray(probs).ravel() >= threshold) == y).mean())


def rmse(targets: np.ndarray, predictions: np.ndarray) -> float:
    diff = np.asarray(predictions, dtype=np.float64).ravel() - np.asarray(targets, dtype=np.float64).ravel()
    return float(np.sqrt((diff**2).mean()))


def mae(targets: np.ndarray, predictions: np.ndarray) -> float:
    diff = np.asarray(predictions, dtype=np.float64).ravel() - np.asarray(targets, dtype=np.float64).ravel()
    return float(np.abs(diff).mean())


def classification_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    return {"auc": auc(labels, probs), "logloss": log_loss(labels, probs), "accuracy": accuracy(labels, probs)}


def rating_metrics(targets: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    return {"rmse": rmse(targets, predictions), "mae": mae(targets, predictions)}
