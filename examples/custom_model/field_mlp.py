"""A ranker of your own: recsys's field embeddings (user and item features, the history), pooled
by mean and max, then an MLP to one logit.

    recsys train --model examples/custom_model/field_mlp.py:FieldMLP --interactions data.csv \
        --users users.csv --items items.csv --out ranker
"""

from __future__ import annotations

import torch
from torch import nn

from trainer.models.fields import FieldEmbedding, FieldLayout, init_xavier


class FieldMLP(nn.Module):
    task = "rank"

    def __init__(self, fields: FieldLayout, dim: int = 16, hidden: int = 64, dropout: float = 0.1):
        super().__init__()
        self.fields = fields  # recsys reads it to know whether the model takes user ids
        self.embed = FieldEmbedding(fields, dim)
        self.head = nn.Sequential(nn.Linear(2 * dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 1))
        init_xavier(self)  # the field embeddings' numeric vectors start uninitialised

    def logits(
        self,
        user_cat=None,
        user_num=None,
        item_id=None,
        item_cat=None,
        item_num=None,
        item_multi=None,
        history=None,
        user_id=None,
    ) -> torch.Tensor:
        """Inputs as trainer/models/fields.py lists them (absent ones None) -> logits (B,)."""
        e = self.embed(user_cat, user_num, item_id, item_cat, item_num, item_multi, history, user_id)  # (B, F, D)
        pooled = torch.cat([e.mean(dim=1), e.amax(dim=1)], dim=-1)  # (B, 2D)
        return self.head(pooled).squeeze(-1)

    def forward(
        self,
        user_cat=None,
        user_num=None,
        item_id=None,
        item_cat=None,
        item_num=None,
        item_multi=None,
        history=None,
        user_id=None,
    ) -> torch.Tensor:
        """-> probabilities (B,)."""
        return torch.sigmoid(self.logits(user_cat, user_num, item_id, item_cat, item_num, item_multi, history, user_id))
