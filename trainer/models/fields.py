"""Field embeddings shared by the feature-based models (DeepFM, DCN-v2, Conv1D CTR, rating).

Every model reads the same inputs (see trainer/export/ranker.py for the serving contract),
all with batch B = number of (user, candidate item) rows; an input whose feature count is 0 is
absent (None):

    user_cat    (B, n_user_cat)       int64   schema tokens, PAD = 0, OOV = 1
    user_num    (B, n_user_num)       float32 FeatureSpec.encode_numeric values
    item_id     (B,)                  int64   item token (item index position + 2)
    item_cat    (B, n_item_cat)       int64
    item_num    (B, n_item_num)       float32
    item_multi  (B, n_item_multi, M)  int64   right-padded with PAD
    history     (B, L)                int64   most recent item tokens, left-padded with PAD
    user_id     (B,)                  int64   user token (artifact user index position + 2;
                                              OOV = 1 for users unseen in training); optional

User-side inputs (user_id, user_cat, user_num, history) may instead carry ONE row for all B
candidates (batch 1, what serving one user over many candidates feeds): their fields are
computed once and repeated to the B rows, so the history is pooled once per request, not once
per candidate. With B user rows each row pairs with its own candidate (training, explanations).

Each feature becomes one field vector of width `dim`: the user id (when the layout reads it)
and categorical -> its embedding; numeric ->
value * a learned vector; multi-valued -> masked mean of its tokens' embeddings (no tokens ->
zeros). The history gives up to three fields: the masked mean of its items' embeddings (a
table of its own), log(1 + number of real items) * a learned vector, and optionally an
attention-weighted mean with the candidate's id embedding as the query. Embedding + masked
mean rather than EmbeddingBag, which exports as a per-row loop (shared/NOTES.md); masked
attention logits are large finite negatives, so an all-PAD history gives zeros, not NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from recsys.schema import FIRST_TOKEN, PAD

__all__ = ["FieldEmbedding", "FieldLayout", "init_xavier"]

NEG_LARGE = -1e9  # masked attention logits: finite, so all-PAD rows give no NaN


@dataclass(frozen=True)
class FieldLayout:
    """Which features a model reads; vocabulary sizes count PAD and OOV."""

    num_items: int  # real items; item tokens run to num_items + FIRST_TOKEN - 1
    user_ids: int = 0  # user-id vocabulary (known users + PAD + OOV); 0 = no user-id field
    user_cat: tuple[int, ...] = ()  # vocabulary size per user categorical feature
    n_user_num: int = 0  # user numeric features
    item_cat: tuple[int, ...] = ()  # vocabulary size per item categorical feature
    n_item_num: int = 0  # item numeric features
    item_multi: tuple[int, ...] = ()  # vocabulary size per item multi-valued feature
    history: bool = True  # read the user's recent items as one more field
    history_count: bool = True  # with history: log(1 + number of recent items) as one more field
    history_attention: bool = False  # with history: also pool it by attention to the candidate

    @property
    def num_fields(self) -> int:
        return (
            int(self.user_ids > 0)
            + len(self.user_cat)
            + self.n_user_num
            + 1
            + len(self.item_cat)
            + self.n_item_num
            + len(self.item_multi)
            + self._num_history_fields
        )

    @property
    def num_user_fields(self) -> int:
        """Fields describing the user; they come first in FieldEmbedding's output."""
        return int(self.user_ids > 0) + len(self.user_cat) + self.n_user_num + self._num_history_fields

    @property
    def _num_history_fields(self) -> int:
        return int(self.history) * (1 + int(self.history_count) + int(self.history_attention))


def _masked_mean(emb: nn.Embedding, tokens: torch.Tensor) -> torch.Tensor:
    """tokens (..., T) int64 -> (..., D): mean of the non-PAD tokens' embeddings, 0 if none."""
    mask = (tokens != PAD).to(emb.weight.dtype).unsqueeze(-1)  # (..., T, 1)
    total = (emb(tokens) * mask).sum(dim=-2)  # (..., D)
    return total / mask.sum(dim=-2).clamp(min=1.0)


class FieldEmbedding(nn.Module):
    """Inputs -> field vectors (B, F, dim), user fields first: user_id, user_cat, user_num, history
    (mean, count, attention), then item_id, item_cat, item_num, item_multi
    (F = layout.num_fields)."""

    def __init__(self, layout: FieldLayout, dim: int):
        super().__init__()
        self.layout = layout
        self.user_id = nn.Embedding(layout.user_ids, dim, padding_idx=PAD) if layout.user_ids else None
        self.user_cat = nn.ModuleList(nn.Embedding(v, dim, padding_idx=PAD) for v in layout.user_cat)
        self.user_num = nn.Parameter(torch.empty(layout.n_user_num, dim))
        items = layout.num_items + FIRST_TOKEN
        self.history = nn.Embedding(items, dim, padding_idx=PAD) if layout.history else None
        self.history_count = nn.Parameter(torch.empty(1, dim))
        self.item_id = nn.Embedding(items, dim, padding_idx=PAD)
        self.item_cat = nn.ModuleList(nn.Embedding(v, dim, padding_idx=PAD) for v in layout.item_cat)
        self.item_num = nn.Parameter(torch.empty(layout.n_item_num, dim))
        self.item_multi = nn.ModuleList(nn.Embedding(v, dim, padding_idx=PAD) for v in layout.item_multi)

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
        user: list[torch.Tensor] = []  # each (U, k, D), U = 1 or B user rows
        if self.user_id is not None:
            if user_id is None:
                raise ValueError("this model reads the user id: pass user_id")
            user.append(self.user_id(user_id).unsqueeze(1))
        if user_cat is not None and len(self.user_cat):
            user.append(torch.stack([e(user_cat[:, j]) for j, e in enumerate(self.user_cat)], dim=1))
        if user_num is not None and self.layout.n_user_num:
            user.append(user_num.unsqueeze(-1) * self.user_num)  # (U, n, 1) * (n, D)
        query = self.item_id(item_id)  # (B, D)
        attention: torch.Tensor | None = None
        if self.history is not None and history is not None:
            pooled, attention = self._history_fields(history, query)
            user += pooled
        fields: list[torch.Tensor] = []  # each (B, k, D)
        if user:
            # Row b of the candidates reads user row b % U: all B rows of one user (U = 1), or
            # row-for-row (U = B). A gather rather than expand: no size guard in the exported graph.
            u = torch.cat(user, dim=1)
            fields.append(u.index_select(0, _user_rows(query, u)))
        if attention is not None:
            fields.append(attention)
        fields.append(query.unsqueeze(1))
        if item_cat is not None and len(self.item_cat):
            fields.append(torch.stack([e(item_cat[:, j]) for j, e in enumerate(self.item_cat)], dim=1))
        if item_num is not None and self.layout.n_item_num:
            fields.append(item_num.unsqueeze(-1) * self.item_num)
        if item_multi is not None and len(self.item_multi):
            pooled = [_masked_mean(e, item_multi[:, j]) for j, e in enumerate(self.item_multi)]  # (B, D) each
            fields.append(torch.stack(pooled, dim=1))
        return torch.cat(fields, dim=1)  # (B, F, D)

    def _history_fields(
        self, history: torch.Tensor, query: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """history (U, L), candidate embedding query (B, D) -> the user-side fields (mean, count:
        (U, 1, D) each) and, with attention pooling, the (B, 1, D) field it gives each candidate."""
        mask = (history != PAD).to(query.dtype).unsqueeze(-1)  # (U, L, 1)
        h = self.history(history) * mask  # (U, L, D)
        count = mask.sum(dim=1)  # (U, 1)
        out = [(h.sum(dim=1) / count.clamp(min=1.0)).unsqueeze(1)]
        if self.layout.history_count:
            out.append((torch.log1p(count) * self.history_count).unsqueeze(1))
        attention = None
        if self.layout.history_attention:
            rows = _user_rows(query, h)
            h, mask = h.index_select(0, rows), mask.index_select(0, rows)  # (B, L, D), (B, L, 1)
            logits = (h @ query.unsqueeze(-1)) / math.sqrt(query.shape[-1])  # (B, L, 1)
            weights = logits.masked_fill(mask == 0, NEG_LARGE).softmax(dim=1)  # all-PAD rows: uniform over zeros
            attention = (weights * h).sum(dim=1).unsqueeze(1)
        return out, attention


def _user_rows(candidates: torch.Tensor, user: torch.Tensor) -> torch.Tensor:
    """(B,) int64: the user row of each candidate row, b % U. U is counted as a tensor, not
    read as a size, so the exported graph computes it (a modulo by a symbolic size does not
    export with torch 2.13)."""
    users = torch.ones_like(user[:, 0, 0], dtype=torch.long).sum()
    return torch.remainder(torch.arange(candidates.shape[0], device=candidates.device), users)


def init_xavier(module: nn.Module) -> None:
    """Xavier-uniform weights of Linear, Conv1d, Embedding and FieldEmbedding's numeric
    vectors; zero biases and PAD rows."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Embedding)):
            nn.init.xavier_uniform_(m.weight)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
            if isinstance(m, nn.Embedding) and m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()
        if isinstance(m, FieldEmbedding):
            for p in (m.user_num, m.item_num, m.history_count):
                if p.numel():
                    nn.init.xavier_uniform_(p)
