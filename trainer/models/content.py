"""Content-aware SASRec: the item representation fuses an id embedding with the item's content,
so items without interactions (cold start) still get a meaningful vector.

    item(i) = id_emb(i) * keep(i) + content(i)
    content(i) = MLP([mean attr_emb(attrs_i) ; mean text_emb(words_i) ; W_v vector_i])

- attrs: attribute tokens (categorical values, each genre of a multi-valued column, numeric
  buckets such as the release-year bucket), one vocabulary, PAD = 0;
- words: hashed title/description words (trainer/content.py), PAD = 0;
- vector: an optional precomputed item vector (image/text embedding), zero when missing.

keep(i) is 0 for items without training interactions (their id rows were never trained) and,
during training, 0 with probability `id_dropout` per item and step, so the content path must
carry the item on its own (a model built without any content skips id dropout). The backbone is SASRec unchanged: the fused table takes the place of
its item embedding for both the input sequence and the output scores.

Content tensors are buffers, so they travel in the state dict and the ONNX graph. `export_view`
folds the whole fused table into one constant (N + FIRST_TOKEN, D) tensor: the served graph is
as cheap as plain SASRec. Adding items means recomputing those buffers from the item table and
exporting again (trainer/content.py `add_items`), not retraining.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from recsys.schema import FIRST_TOKEN, PAD
from trainer.models.sasrec import SASRec, SASRecConfig


@dataclass(frozen=True)
class ContentSASRecConfig:
    num_items: int  # real items; tables have num_items + FIRST_TOKEN rows
    max_len: int = 50  # most recent items the model reads
    hidden: int = 64  # width D
    heads: int = 2  # attention heads
    layers: int = 2  # Transformer blocks
    inner: int = 256  # feed-forward width
    dropout: float = 0.2  # SASRec dropout
    id_dropout: float = 0.5  # training: probability an item's id embedding is dropped per step
    num_attributes: int = 2  # attribute vocabulary size, PAD and OOV included
    max_attributes: int = 1  # attribute tokens per item (padded)
    text_buckets: int = 2  # hashed word buckets, PAD included
    max_words: int = 1  # words per item (padded)
    vector_dim: int = 0  # width of the precomputed item vectors; 0 = none

    def sasrec(self) -> SASRecConfig:
        return SASRecConfig(num_items=self.num_items, max_len=self.max_len, hidden=self.hidden, heads=self.heads,
                            layers=self.layers, inner=self.inner, dropout=self.dropout)


class FusedItemEmbedding(nn.Module):
    """Drop-in for SASRec's `nn.Embedding`: `forward(tokens)` and `.weight` give fused vectors.

    Buffers (R = num_items + FIRST_TOKEN rows; rows PAD and OOV are all zero):
    attrs (R, A) int64, words (R, W) int64, vectors (R, V) float32, known (R, 1) float32.
    """

    def __init__(self, cfg: ContentSASRecConfig):
        super().__init__()
        rows, d = cfg.num_items + FIRST_TOKEN, cfg.hidden
        self.id_dropout = cfg.id_dropout
        self.id_emb = nn.Embedding(rows, d, padding_idx=PAD)
        self.attr_emb = nn.Embedding(cfg.num_attributes, d, padding_idx=PAD)
        self.word_emb = nn.Embedding(cfg.text_buckets, d, padding_idx=PAD)
        self.vector_proj = nn.Linear(max(cfg.vector_dim, 1), d, bias=False)
        self.mix = nn.Sequential(nn.Linear(3 * d, d), nn.GELU(), nn.Linear(d, d))
        self.register_buffer("attrs", torch.zeros(rows, cfg.max_attributes, dtype=torch.int64))
        self.register_buffer("words", torch.zeros(rows, cfg.max_words, dtype=torch.int64))
        self.register_buffer("vectors", torch.zeros(rows, max(cfg.vector_dim, 1)))
        known = torch.ones(rows, 1)
        known[:FIRST_TOKEN] = 0.0
        self.register_buffer("known", known)
        # Set by export_view: the whole table as one constant (not saved in the state dict).
        self.register_buffer("frozen", None, persistent=False)

    def set_content(self, attrs: torch.Tensor, words: torch.Tensor, vectors: torch.Tensor, known: torch.Tensor) -> None:
        """Replaces the content buffers (shapes as in the class docstring, same sizes as configured)."""
        for name, value in (("attrs", attrs), ("words", words), ("vectors", vectors), ("known", known)):
            current = getattr(self, name)
            if tuple(value.shape) != tuple(current.shape):
                raise ValueError(f"{name} has shape {tuple(value.shape)}, the model expects {tuple(current.shape)}")
            current.copy_(value.to(current.dtype))

    def content(self) -> torch.Tensor:
        """(R, D): the content part of every item's vector."""
        def masked_mean(emb: nn.Embedding, tokens: torch.Tensor) -> torch.Tensor:
            mask = (tokens != PAD).unsqueeze(-1).float()  # (R, T, 1)
            return (emb(tokens) * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (R, D)

        parts = [masked_mean(self.attr_emb, self.attrs), masked_mean(self.word_emb, self.words),
                 self.vector_proj(self.vectors)]
        return self.mix(torch.cat(parts, dim=-1))  # (R, D)

    def has_content(self) -> bool:
        """False for a model built without content (registry default): id dropout would only hurt it."""
        return bool((self.attrs != PAD).any() or (self.words != PAD).any() or (self.vectors != 0).any())

    @property
    def weight(self) -> torch.Tensor:
        """(R, D) fused table; row PAD is zero."""
        if self.frozen is not None:
            return self.frozen
        keep = self.known
        if self.training and self.id_dropout > 0 and self.has_content():
            keep = keep * (torch.rand_like(keep) >= self.id_dropout).float()
        table = self.id_emb.weight * keep + self.content()
        is_pad = torch.arange(table.shape[0], device=table.device).unsqueeze(-1) == PAD
        return table.masked_fill(is_pad, 0.0)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (...) int64 -> (..., D)."""
        return self.weight[tokens]


class ContentSASRec(SASRec):
    """SASRec over fused id + content item vectors (see module docstring)."""

    def __init__(self, cfg: ContentSASRecConfig):
        super().__init__(cfg.sasrec())
        self.content_cfg = cfg
        self.item_emb = FusedItemEmbedding(cfg)

    def export_view(self) -> ContentSASRec:
        """An equivalent eval-mode copy whose fused item table is one constant tensor."""
        view = copy.deepcopy(self).eval()
        with torch.no_grad():
            table = view.item_emb.weight.detach().clone()
        view.item_emb.frozen = table
        return view
