"""The classic convolutional CTR baseline: Conv1D -> pooling -> dense -> sigmoid.

The field embeddings (B, F, D) are read as a length-F sequence with D channels (field order is
the fixed order of fields.py, as in CCPM, Liu et al., 2015): one Conv1d layer (same padding,
ReLU), max pooling over pairs of neighbouring positions, then the pooled map is flattened and
dense layers give one logit. Flattening, rather than global pooling, keeps each position, so
the dense layers can combine a user field with a distant item field. forward returns
sigmoid(logit). Inputs as in trainer/models/fields.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from trainer.models.fields import FieldEmbedding, FieldLayout, init_xavier

__all__ = ["ConvCTR", "ConvCTRConfig"]


@dataclass(frozen=True)
class ConvCTRConfig:
    fields: FieldLayout  # which features the model reads
    dim: int = 16  # field embedding width D (input channels)
    filters: int = 32  # conv output channels C
    kernel: int = 3  # conv kernel width, in fields (odd: same padding)
    hidden: int = 128  # dense layer width
    dropout: float = 0.2  # before each dense layer


class ConvCTR(nn.Module):
    def __init__(self, cfg: ConvCTRConfig):
        super().__init__()
        assert cfg.kernel % 2 == 1, "kernel must be odd"
        self.cfg = cfg
        self.embed = FieldEmbedding(cfg.fields, cfg.dim)
        num_fields = cfg.fields.num_fields
        self.pool_size = 2 if num_fields >= 2 else 1
        self.conv = nn.Conv1d(cfg.dim, cfg.filters, cfg.kernel, padding=cfg.kernel // 2)
        self.pool = nn.MaxPool1d(self.pool_size)
        self.dense = nn.Sequential(
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.filters * (num_fields // self.pool_size), cfg.hidden),
            nn.ReLU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, 1),
        )
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
        e = self.embed(user_cat, user_num, item_id, item_cat, item_num, item_multi, history, user_id)  # (B, F, D)
        h = torch.relu(self.conv(e.transpose(1, 2)))  # (B, C, F)
        pooled = self.pool(h)  # (B, C, F // pool)
        return self.dense(pooled.flatten(1)).squeeze(-1)  # (B,)

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
