"""BPR-MF: matrix factorisation trained with Bayesian personalised ranking (Rendle et al., 2009).

A user is the mean of their history's item factors (as FISM, Kabbur et al. 2013, and
asymmetric SVD do) instead of a factor of their own, so a new user or a new event is served
at once, without retraining, like every other model here. The score of item j is
`user . q_j + b_j`. It trains with the `bpr` loss (one sampled negative per target) unless the
config names another; plain SGD (`optimizer = "sgd"`, `momentum = 0`) is the textbook setting.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from recsys.schema import FIRST_TOKEN, PAD

__all__ = ["BPRMF", "BPRMFConfig"]


@dataclass(frozen=True)
class BPRMFConfig:
    num_items: int
    max_len: int = 50  # most recent items the user's factor averages
    hidden: int = 64  # factor width D


class BPRMF(nn.Module):
    default_loss = "bpr"  # what `loss = "auto"` means for this model

    def __init__(self, cfg: BPRMFConfig):
        super().__init__()
        self.cfg = cfg
        self.user_part = nn.Embedding(cfg.num_items + FIRST_TOKEN, cfg.hidden, padding_idx=PAD)  # history side
        self.item_factors = nn.Embedding(cfg.num_items, cfg.hidden)  # (N, D) scored side
        self.item_bias = nn.Parameter(torch.zeros(cfg.num_items))  # (N,)

    def encode(self, item_seq: torch.Tensor) -> torch.Tensor:
        """item_seq (B, L) left-padded -> (B, L, D): at t, the mean factor of the items up to t."""
        real = (item_seq != PAD).unsqueeze(-1).float()  # (B, L, 1)
        total = torch.cumsum(self.user_part(item_seq) * real, dim=1)  # (B, L, D)
        return total / torch.cumsum(real, dim=1).clamp(min=1.0)

    def score(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (..., D) -> (..., N)."""
        return hidden @ self.item_factors.weight.T + self.item_bias

    def output_embeddings(self) -> torch.Tensor:
        return self.item_factors.weight

    def output_bias(self) -> torch.Tensor:
        return self.item_bias

    def forward(self, item_seq: torch.Tensor) -> torch.Tensor:
        """item_seq (B, L) -> scores (B, N) after the whole history."""
        return self.score(self.encode(item_seq)[:, -1, :])
