"""Rating model: feature-based biased factorisation with an MLP, trained with MSE.

A user vector u is the sum of the user's field embeddings (categorical, numeric, and the mean
of their recent items' embeddings, which plays the part of SVD++'s implicit-feedback term);
an item vector v is the sum of the item's (id, categorical, numeric, multi-valued).
    z = bias + Σ first-order weights + <u, v> + MLP([u, v])
    rating = low + (high - low) · sigmoid(z)
so predictions stay inside the training ratings' range. Inputs as in trainer/models/fields.py;
forward returns the predicted rating (B,).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from trainer.models.deepfm import mlp
from trainer.models.fields import FieldEmbedding, FieldLayout, init_xavier

__all__ = ["RatingModel", "RatingModelConfig"]


@dataclass(frozen=True)
class RatingModelConfig:
    fields: FieldLayout  # which features the model reads
    dim: int = 32  # embedding width D
    mlp: tuple[int, ...] = (64,)  # hidden widths over [u, v]
    dropout: float = 0.2  # in the MLP
    low: float = 1.0  # smallest rating
    high: float = 5.0  # largest rating


class RatingModel(nn.Module):
    def __init__(self, cfg: RatingModelConfig):
        super().__init__()
        assert cfg.high > cfg.low, "high must exceed low"
        self.cfg = cfg
        self.embed = FieldEmbedding(cfg.fields, cfg.dim)
        self.linear = FieldEmbedding(cfg.fields, 1)
        self.bias = nn.Parameter(torch.zeros(1))
        self.deep, width = mlp(2 * cfg.dim, cfg.mlp, cfg.dropout)
        self.out = nn.Linear(width, 1)
        init_xavier(self)

    def forward(
        self,
        user_cat: torch.Tensor | None,
        user_num: torch.Tensor | None,
        item_id: torch.Tensor,
        item_cat: torch.Tensor | None,
        item_num: torch.Tensor | None,
        item_multi: torch.Tensor | None,
        history: torch.Tensor | None,
        user_id: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Inputs (see fields.py) -> predicted ratings (B,) in [low, high]."""
        args = (user_cat, user_num, item_id, item_cat, item_num, item_multi, history, user_id)
        e = self.embed(*args)  # (B, F, D), user fields first
        n_user = self.cfg.fields.num_user_fields
        u, v = e[:, :n_user].sum(dim=1), e[:, n_user:].sum(dim=1)  # (B, D) each
        z = (
            self.bias
            + self.linear(*args).sum(dim=(1, 2))
            + (u * v).sum(dim=-1)
            + self.out(self.deep(torch.cat([u, v], dim=-1))).squeeze(-1)
        )  # (B,)
        return self.cfg.low + (self.cfg.high - self.cfg.low) * torch.sigmoid(z)
