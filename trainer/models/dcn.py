"""DCN-v2: explicit feature crosses with full-rank matrices, beside an MLP (Wang et al., 2021).

x0 = concatenated field embeddings (B, F·D); cross layer l: x_{l+1} = x0 ⊙ (W_l x_l + b_l) + x_l;
the cross output and an MLP over x0 ("parallel" structure) are concatenated into one logit;
forward returns sigmoid(logit). Inputs as in trainer/models/fields.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from trainer.models.deepfm import mlp
from trainer.models.fields import FieldEmbedding, FieldLayout, init_xavier

__all__ = ["DCNv2", "DCNv2Config"]


@dataclass(frozen=True)
class DCNv2Config:
    fields: FieldLayout  # which features the model reads
    dim: int = 16  # field embedding width D
    cross_layers: int = 3  # cross layers
    mlp: tuple[int, ...] = (256, 128)  # hidden widths of the deep part
    dropout: float = 0.2  # in the deep part


class CrossLayer(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """x0, x (B, W) -> (B, W)."""
        return x0 * self.linear(x) + x


class DCNv2(nn.Module):
    def __init__(self, cfg: DCNv2Config):
        super().__init__()
        self.cfg = cfg
        width = cfg.fields.num_fields * cfg.dim
        self.embed = FieldEmbedding(cfg.fields, cfg.dim)
        self.cross = nn.ModuleList(CrossLayer(width) for _ in range(cfg.cross_layers))
        self.deep, deep_width = mlp(width, cfg.mlp, cfg.dropout)
        self.out = nn.Linear(width + deep_width, 1)
        init_xavier(self)

    def logits(
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
        """Inputs (see fields.py) -> logits (B,)."""
        x0 = self.embed(user_cat, user_num, item_id, item_cat, item_num, item_multi, history, user_id).flatten(
            1
        )  # (B, F·D)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        return self.out(torch.cat([x, self.deep(x0)], dim=-1)).squeeze(-1)  # (B,)

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
        """Inputs -> probabilities (B,)."""
        return torch.sigmoid(self.logits(user_cat, user_num, item_id, item_cat, item_num, item_multi, history, user_id))
