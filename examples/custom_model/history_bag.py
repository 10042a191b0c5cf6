"""A next-item model of your own: the running mean of the history's item vectors, mixed with
the latest item by a small MLP, scored against every item vector.

Train it with recsys, unchanged:

    recsys train --model examples/custom_model/history_bag.py:HistoryBag --interactions data.csv --out model

Options come from the config file's [model_options] table (dim, dropout below).
"""

from __future__ import annotations

import torch
from torch import nn

from recsys.schema import FIRST_TOKEN, PAD


class HistoryBag(nn.Module):
    task = "next_item"

    def __init__(self, num_items: int, max_len: int, dim: int = 64, dropout: float = 0.2):
        super().__init__()
        self.items = nn.Embedding(num_items + FIRST_TOKEN, dim, padding_idx=PAD)  # rows 0, 1: PAD, OOV
        self.mix = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim))
        self.bias = nn.Parameter(torch.zeros(num_items))

    def encode(self, item_seq: torch.Tensor) -> torch.Tensor:
        """item_seq (B, L) left-padded tokens -> hidden (B, L, D); position t reads items up to t."""
        e = self.items(item_seq)  # (B, L, D), zeros at PAD
        real = (item_seq != PAD).unsqueeze(-1).to(e.dtype)  # (B, L, 1)
        mean = e.cumsum(dim=1) / real.cumsum(dim=1).clamp(min=1.0)  # (B, L, D) running mean
        return e + self.mix(torch.cat([mean, e], dim=-1))

    def output_embeddings(self) -> torch.Tensor:
        """(N, D) item vectors, item-index order."""
        return self.items.weight[FIRST_TOKEN:]

    def output_bias(self) -> torch.Tensor:
        return self.bias

    def score(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (..., D) -> scores (..., N)."""
        return hidden @ self.output_embeddings().T + self.bias

    def forward(self, item_seq: torch.Tensor) -> torch.Tensor:
        """item_seq (B, L) -> scores (B, N) of every item as the next one."""
        return self.score(self.encode(item_seq)[:, -1])
