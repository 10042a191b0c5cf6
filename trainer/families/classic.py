"""Closed-form fitting of the classic baselines (trainer/models/classic.py): popularity,
ItemKNN and EASE.

Same data and selection as the deep next-item models (trainer/families/next_item.py): every
user's sequence minus its last event trains, that last event validates (full ranking, seen
items excluded, NDCG@k). The one setting each has is chosen on validation from a small grid
when the config leaves it None (ItemKNN `shrink`, EASE `l2`); the test split is never seen.
The user-item matrix holds each user's whole training sequence (repeats count once); scores at
serving time come from the last `max_len` items, as the server sends them.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import scipy.sparse as sp
import torch

from recsys.schema import FIRST_TOKEN
from trainer.loop import FitResult
from trainer.models.classic import CLASSIC_MODELS, EASE, ItemKNN, Popularity

__all__ = ["GRIDS", "ease_weights", "fit_classic", "interaction_matrix", "knn_neighbours"]

# Candidates tried on validation when the config leaves the setting None.
GRIDS = {"itemknn": ("shrink", (0.0, 10.0, 50.0, 200.0)), "ease": ("l2", (50.0, 150.0, 500.0, 1500.0, 5000.0))}


def interaction_matrix(sequences: list[np.ndarray], num_items: int) -> sp.csr_matrix:
    """(U, N) binary float64: 1 where a user's sequence (tokens) holds the item."""
    rows = np.repeat(np.arange(len(sequences)), [len(s) for s in sequences])
    cols = (np.concatenate(sequences) if sequences else np.zeros(0, dtype=np.int64)) - FIRST_TOKEN
    keep = (cols >= 0) & (cols < num_items)  # OOV tokens carry no item
    x = sp.csr_matrix((np.ones(int(keep.sum())), (rows[keep], cols[keep])), shape=(len(sequences), num_items))
    x.data[:] = 1.0  # duplicates summed by the constructor count once
    return x


def knn_neighbours(x: sp.csr_matrix, k: int, shrink: float) -> tuple[np.ndarray, np.ndarray]:
    """Each item's `k` most similar items by shrunk cosine: (cols (N, k) int64, sims (N, k) float32).

    Items with fewer than k co-occurring items get zero-weight padding columns. Row blocks are
    densified a few at a time, so memory stays at ~2e7 floats whatever N is.
    """
    n = x.shape[1]
    k = min(k, max(n - 1, 1))
    co = (x.T @ x).tocsr()  # (N, N) co-occurrence counts
    norms = np.sqrt(co.diagonal())  # (N,)
    cols = np.zeros((n, k), dtype=np.int64)
    sims = np.zeros((n, k), dtype=np.float32)
    step = max(1, int(2e7 // max(n, 1)))
    for start in range(0, n, step):
        block = co[start : start + step].toarray()  # (b, N)
        block /= np.outer(norms[start : start + step], norms) + shrink + 1e-12
        block[np.arange(len(block)), np.arange(start, start + len(block))] = 0.0  # never your own neighbour
        top = np.argpartition(-block, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (len(block), 1))
        cols[start : start + len(block)] = top
        sims[start : start + len(block)] = np.take_along_axis(block, top, axis=1)
    return cols, sims


def ease_weights(gram: np.ndarray, l2: float) -> np.ndarray:
    """(N, N) EASE item-item weights from the Gram matrix X^T X: B = I - P / diag(P), diag(B) = 0."""
    p = np.linalg.inv(gram + l2 * np.eye(len(gram)))
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    return b


def _model(cfg, num_items: int, **setting):
    """`cfg.model` built from the config's fields it shares (trainer/families/next_item.py), then `setting`."""
    return CLASSIC_MODELS[cfg.model][1](dataclasses.replace(cfg.model_config(num_items), **setting))


def _candidates(cfg) -> list[float | None]:
    if cfg.model not in GRIDS:
        return [None]
    name, grid = GRIDS[cfg.model]
    given = getattr(cfg, name, None)
    return [given] if given is not None else list(grid)


def fit_classic(cfg, sequences: list[np.ndarray], num_items: int, *, progress: bool = True, log=print) -> FitResult:
    """Fits `cfg.model` (pop | itemknn | ease) in closed form; returns the validated model.

    `cfg` is a TrainConfig (max_len and k are read; `shrink` / `l2` when set); `sequences` are
    per-user int64 tokens, oldest first, as trainer/families/next_item.py takes them.
    """
    from trainer.families.next_item import validate

    start = time.perf_counter()
    train = [s[:-1] for s in sequences if len(s) >= 2]
    val = [(s[:-1], s[-1]) for s in sequences if len(s) >= 3]
    histories, targets = [h for h, _ in val], np.array([t for _, t in val], dtype=np.int64)
    x = interaction_matrix(train, num_items)
    if cfg.model == "ease":
        limit = cfg.model_config(num_items).max_items
        if num_items > limit:
            raise ValueError(
                f"ease holds {num_items:,} x {num_items:,} matrices; it is for catalogues up to {limit:,} items "
                "(use itemknn for larger ones)"
            )
        gram = (x.T @ x).toarray()
    history: list[dict] = []
    best: tuple[float, FitResult | None] = (-np.inf, None)
    setting_name = GRIDS.get(cfg.model, ("", ()))[0]
    for i, value in enumerate(_candidates(cfg), start=1):
        setting = {setting_name: value} if setting_name else {}
        model = _model(cfg, num_items, **setting)
        with torch.no_grad():
            if isinstance(model, Popularity):
                model.log_counts.copy_(torch.from_numpy(np.log1p(np.asarray(x.sum(axis=0)).ravel())))
            elif isinstance(model, ItemKNN):
                cols, sims = knn_neighbours(x, model.neighbour_cols.shape[1], value)
                model.neighbour_cols[FIRST_TOKEN:] = torch.from_numpy(cols)
                model.neighbour_weights[FIRST_TOKEN:] = torch.from_numpy(sims)
            elif isinstance(model, EASE):
                model.weights[FIRST_TOKEN:] = torch.from_numpy(ease_weights(gram, value).astype(np.float32))
        row = {"epoch": i, **setting, **(validate(model, histories, targets, num_items, cfg) if val else {})}
        history.append(row)
        if progress:
            log(f"{cfg.model} {setting}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "epoch"))
        value_of = row.get(f"ndcg@{cfg.k}", 0.0)
        if best[1] is None or value_of > best[0]:
            best = (value_of, FitResult(model.eval(), i, dict(row)))
    result = best[1]
    result.history = history
    result.seconds = time.perf_counter() - start
    return result
