"""DeepFM: a factorization machine and an MLP over shared field embeddings (Guo et al., 2017).

logit = bias + Σ first-order weights + FM pairwise term + MLP(concatenated fields);
forward returns sigmoid(logit), the click (or "liked") probability. Inputs as in
trainer/models/fields.py; the user's recent items are one more field (their mean embedding).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from trainer.models.fields import FieldEmbedding, FieldLayout, init_xavier

__all__ = ["DeepFM", "DeepFMConfig", "mlp"]


@dataclass(frozen=True)
class DeepFMConfig:
    fields: FieldLayout  # which features the model reads
    dim: int = 16  # field embedding width D
    mlp: tuple[int, ...] = (256, 128)  # hidden widths of the deep part
    dropout: float = 0.2  # in the deep part


def mlp(d_in: int, widths: tuple[int, ...], dropout: float) -> tuple[nn.Sequential, int]:
    """Linear -> ReLU -> Dropout per width; returns the stack and its output width."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Linear(d_in, width), nn.ReLU(), nn.Dropout(dropout)]
        d_in = width
    return nn.Sequential(*layers), d_in


def fm_pairwise(e: torch.Tensor) -> torch.Tensor:
    """e (B, F, D) -> (B,): Σ_{i<j} <e_i, e_j> = ½ Σ_d ((Σ_i e_id)² - Σ_i e_id²)."""
    return 0.5 * (e.sum(dim=1).square() - e.square().sum(dim=1)).sum(dim=-1)


class DeepFM(nn.Module):
    def __init__(self, cfg: DeepFMConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = FieldEmbedding(cfg.fields, cfg.dim)
        self.linear = FieldEmbedding(cfg.fields, 1)  # first-order weights as 1-wide fields
        self.bias = nn.Parameter(torch.zeros(1))
        self.deep, width = mlp(cfg.fields.num_fields * cfg.dim, cfg.mlp, cfg.dropout)
        self.out = nn.Linear(width, 1)
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
        args = (user_cat, user_num, item_id, item_cat, item_num, item_multi, history, user_id)
        e = self.embed(*args)  # (B, F, D)
        first = self.linear(*args).sum(dim=(1, 2))  # (B,)
        deep = self.out(self.deep(e.flatten(1))).squeeze(-1)  # (B,)
        return self.bias + first + fm_pairwise(e) + deep

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
