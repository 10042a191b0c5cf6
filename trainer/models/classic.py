"""Classic next-item baselines as ONNX-exportable modules: popularity, ItemKNN, EASE.

Each maps a user's history to catalogue scores exactly as the deep models do,
`forward(item_seq (B, L) int64, left-padded) -> scores (B, N)`, so it is exported, served and
explained by the same code. Their weights are not learnt by gradient descent: they are computed
in closed form from the training histories (trainer/families/classic.py) and held as buffers.

- Popularity: log(1 + training count) of every item; the same list for everyone.
- ItemKNN (Sarwar et al., 2001): cosine similarity of items' user sets, shrunk by
  `c_ij / (|u_i| |u_j| + shrink)`, `neighbours` most similar items kept per item; a user's
  score for item j sums j's similarity to each item of the history. The neighbours that add
  most to a recommended item are its explanation.
- EASE (Steck, 2019): a linear item-item autoencoder with a zero diagonal, closed form
  B = I - P / diag(P), P = (X^T X + l2 I)^-1; a user's scores are their multi-hot history
  times B. Needs an N x N matrix, so it is for catalogues up to `max_items`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from recsys.schema import FIRST_TOKEN

__all__ = ["EASE", "CLASSIC_MODELS", "EASEConfig", "ItemKNN", "ItemKNNConfig", "Popularity", "PopularityConfig"]


@dataclass(frozen=True)
class PopularityConfig:
    num_items: int
    max_len: int = 50  # history length the server sends (unused by the scores)


@dataclass(frozen=True)
class ItemKNNConfig:
    num_items: int
    max_len: int = 50  # most recent items a user's scores sum over
    neighbours: int = 100  # most similar items kept per item
    shrink: float | None = None  # cosine shrinkage; None: chosen on validation (trainer/families/classic.py)


@dataclass(frozen=True)
class EASEConfig:
    num_items: int
    max_len: int = 50  # most recent items in the multi-hot history
    l2: float | None = None  # ridge strength lambda; None: chosen on validation (trainer/families/classic.py)
    max_items: int = 30_000  # refuse larger catalogues: training holds a few N x N float64 matrices


class Popularity(nn.Module):
    def __init__(self, cfg: PopularityConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("log_counts", torch.zeros(cfg.num_items))  # (N,)

    def forward(self, item_seq: torch.Tensor) -> torch.Tensor:
        """item_seq (B, L) -> scores (B, N), the same row for every user."""
        return torch.zeros_like(item_seq[:, :1], dtype=torch.float32) + self.log_counts


class ItemKNN(nn.Module):
    def __init__(self, cfg: ItemKNNConfig):
        super().__init__()
        self.cfg = cfg
        rows, k = cfg.num_items + FIRST_TOKEN, min(cfg.neighbours, max(cfg.num_items - 1, 1))
        # Row t: token t's neighbours as item columns and their similarities (PAD/OOV rows weigh 0).
        self.register_buffer("neighbour_cols", torch.zeros(rows, k, dtype=torch.int64))  # (N + 2, K)
        self.register_buffer("neighbour_weights", torch.zeros(rows, k))  # (N + 2, K)

    def forward(self, item_seq: torch.Tensor) -> torch.Tensor:
        """item_seq (B, L) -> scores (B, N): each item's summed similarity to the history."""
        b = item_seq.shape[0]
        cols = self.neighbour_cols[item_seq].reshape(b, -1)  # (B, L * K)
        weights = self.neighbour_weights[item_seq].reshape(b, -1)  # (B, L * K)
        scores = torch.zeros_like(weights[:, :1]).expand(b, self.cfg.num_items).contiguous()  # (B, N)
        return scores.scatter_add(1, cols, weights)


class EASE(nn.Module):
    def __init__(self, cfg: EASEConfig):
        super().__init__()
        self.cfg = cfg
        # Row t: what token t adds to every item's score (PAD/OOV rows are 0).
        self.register_buffer("weights", torch.zeros(cfg.num_items + FIRST_TOKEN, cfg.num_items))  # (N + 2, N)

    def forward(self, item_seq: torch.Tensor) -> torch.Tensor:
        """item_seq (B, L) -> scores (B, N): the multi-hot history (repeats count once) times B."""
        hot = torch.zeros_like(item_seq, dtype=torch.float32)[:, :1].expand(item_seq.shape[0], self.weights.shape[0])
        hot = hot.contiguous().scatter(1, item_seq, 1.0)  # (B, N + 2)
        return hot @ self.weights


CLASSIC_MODELS = {
    "pop": (PopularityConfig, Popularity),
    "itemknn": (ItemKNNConfig, ItemKNN),
    "ease": (EASEConfig, EASE),
}
