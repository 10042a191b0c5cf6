"""Two-tower retrieval: a user tower and an item tower meeting in one dot product (Yi et al., 2019).

User tower: user features (categorical embeddings, numeric value * learned vector) and the
recent history -> MLP -> L2-normalised vector u (B, D). The history is pooled two ways from
the *item tower's* id embeddings (shared, so a history item and a candidate live in one
space): a plain masked mean and a recency-weighted mean (learned logits per position from
the most recent one; padded positions masked with a large finite negative, so an all-PAD
history gives zeros, not NaN), plus log(1 + history length) * a learned vector.
Item tower: id embedding, categorical, numeric and multi-valued (masked mean) item features
-> MLP -> L2-normalised vector v (N, D). score(u, v) = <u, v> / temperature.

Inputs as in trainer/models/fields.py (user_cat, user_num, history for the user tower;
item_id, item_cat, item_num, item_multi for the item tower). Training (trainer/families/two_tower.py)
uses in-batch sampled softmax with log-Q correction; export precomputes every item's vector
and serves `TwoTowerScorer`: user inputs -> scores over the whole catalogue.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from recsys.schema import FIRST_TOKEN, PAD
from trainer.models.fields import NEG_LARGE, FieldLayout

__all__ = ["TwoTower", "TwoTowerConfig", "TwoTowerScorer"]


@dataclass(frozen=True)
class TwoTowerConfig:
    fields: FieldLayout  # which features the towers read (history_len below sets the recency weights)
    history_len: int = 50  # L: positions of the recency weights (the longest history read)
    dim: int = 64  # output vector width D
    field_dim: int = 32  # width of each feature embedding inside the towers
    hidden: int = 128  # MLP hidden width of each tower
    dropout: float = 0.1  # in both MLPs
    temperature: float = 0.05  # score = <u, v> / temperature


def _tower(d_in: int, hidden: int, d_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, d_out))


def _masked_mean(emb: nn.Embedding, tokens: torch.Tensor) -> torch.Tensor:
    """tokens (..., T) -> (..., E): mean of the non-PAD tokens' embeddings, 0 if none."""
    mask = (tokens != PAD).to(emb.weight.dtype).unsqueeze(-1)
    return (emb(tokens) * mask).sum(dim=-2) / mask.sum(dim=-2).clamp(min=1.0)


class TwoTower(nn.Module):
    def __init__(self, cfg: TwoTowerConfig):
        super().__init__()
        self.cfg = cfg
        f, e = cfg.fields, cfg.field_dim
        self.item_id = nn.Embedding(f.num_items + FIRST_TOKEN, e, padding_idx=PAD)
        self.item_cat = nn.ModuleList(nn.Embedding(v, e, padding_idx=PAD) for v in f.item_cat)
        self.item_num = nn.Parameter(torch.empty(f.n_item_num, e))
        self.item_multi = nn.ModuleList(nn.Embedding(v, e, padding_idx=PAD) for v in f.item_multi)
        self.user_cat = nn.ModuleList(nn.Embedding(v, e, padding_idx=PAD) for v in f.user_cat)
        self.user_num = nn.Parameter(torch.empty(f.n_user_num, e))
        self.recency = nn.Parameter(torch.zeros(max(1, cfg.history_len)))  # logits, last = most recent
        self.history_count = nn.Parameter(torch.empty(1, e))
        n_item = 1 + len(f.item_cat) + f.n_item_num + len(f.item_multi)
        n_user = len(f.user_cat) + f.n_user_num + (3 if f.history else 0)
        self.item_mlp = _tower(n_item * e, cfg.hidden, cfg.dim, cfg.dropout)
        self.user_mlp = _tower(max(1, n_user) * e, cfg.hidden, cfg.dim, cfg.dropout)
        self._init()

    def _init(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.1)
                with torch.no_grad():
                    m.weight[PAD].zero_()
        for p in (self.item_num, self.user_num, self.history_count):
            if p.numel():
                nn.init.normal_(p, std=0.1)

    def user_vectors(
        self, user_cat: torch.Tensor | None, user_num: torch.Tensor | None, history: torch.Tensor | None
    ) -> torch.Tensor:
        """User inputs (B, ...) -> L2-normalised vectors (B, D); history (B, L') with L' <= L."""
        parts: list[torch.Tensor] = []  # each (B, k, E)
        if user_cat is not None and len(self.user_cat):
            parts.append(torch.stack([emb(user_cat[:, j]) for j, emb in enumerate(self.user_cat)], dim=1))
        if user_num is not None and self.user_num.shape[0]:
            parts.append(user_num.unsqueeze(-1) * self.user_num)
        if history is not None and self.cfg.fields.history:
            mask = (history != PAD).to(self.recency.dtype)  # (B, L')
            h = self.item_id(history) * mask.unsqueeze(-1)  # (B, L', E)
            count = mask.sum(dim=1, keepdim=True)  # (B, 1)
            mean = h.sum(dim=1) / count.clamp(min=1.0)  # (B, E)
            logits = self.recency[self.recency.shape[0] - history.shape[1] :].unsqueeze(0)  # (1, L')
            weights = logits.masked_fill(mask == 0, NEG_LARGE).softmax(dim=1)  # (B, L')
            recent = (weights.unsqueeze(-1) * h).sum(dim=1)  # (B, E); all-PAD rows: zeros
            parts += [mean.unsqueeze(1), recent.unsqueeze(1), (torch.log1p(count) * self.history_count).unsqueeze(1)]
        if not parts:
            raise ValueError("the user tower needs user features or a history")
        u = self.user_mlp(torch.cat(parts, dim=1).flatten(1))  # (B, D)
        return nn.functional.normalize(u, dim=-1)

    def item_vectors(
        self,
        item_id: torch.Tensor,
        item_cat: torch.Tensor | None,
        item_num: torch.Tensor | None,
        item_multi: torch.Tensor | None,
    ) -> torch.Tensor:
        """Item inputs (N, ...) -> L2-normalised vectors (N, D)."""
        parts = [self.item_id(item_id).unsqueeze(1)]  # (N, 1, E)
        if item_cat is not None and len(self.item_cat):
            parts.append(torch.stack([emb(item_cat[:, j]) for j, emb in enumerate(self.item_cat)], dim=1))
        if item_num is not None and self.item_num.shape[0]:
            parts.append(item_num.unsqueeze(-1) * self.item_num)
        if item_multi is not None and len(self.item_multi):
            parts.append(
                torch.stack([_masked_mean(emb, item_multi[:, j]) for j, emb in enumerate(self.item_multi)], dim=1)
            )
        v = self.item_mlp(torch.cat(parts, dim=1).flatten(1))  # (N, D)
        return nn.functional.normalize(v, dim=-1)

    def forward(
        self,
        user_cat: torch.Tensor | None,
        user_num: torch.Tensor | None,
        history: torch.Tensor | None,
        item_vectors: torch.Tensor,
    ) -> torch.Tensor:
        """User inputs (B, ...) and item vectors (N, D) -> scores (B, N) = <u, v> / temperature."""
        return self.user_vectors(user_cat, user_num, history) @ item_vectors.T / self.cfg.temperature


class TwoTowerScorer(nn.Module):
    """The served graph: user inputs -> scores (B, N) over precomputed item vectors, columns
    in item-index order (item token t is column t - FIRST_TOKEN)."""

    def __init__(self, model: TwoTower, item_vectors: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("item_vectors", item_vectors.detach().clone())  # (N, D)

    def forward(
        self,
        user_cat: torch.Tensor | None = None,
        user_num: torch.Tensor | None = None,
        history: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.model(user_cat, user_num, history, self.item_vectors)
