"""Content-aware SASRec: the item representation fuses an id embedding with the item's content,
so items without interactions (cold start) still get a meaningful vector.

    item(i) = id_emb(i) * keep(i) + content(i)
    content(i) = MLP([mean attr_emb(attrs_i) ; mean text_emb(words_i) ; W_v vector_i])
    score(u, i) = h_u . item(i) [+ w . content(i) + b]   (the bracket with `content_bias`)

- attrs: attribute tokens (categorical values, each genre of a multi-valued column, numeric
  buckets such as the release-year bucket), one vocabulary, PAD = 0;
- words: hashed title/description words (trainer/families/content.py), PAD = 0;
- vector: an optional precomputed item vector (image/text embedding), zero when missing.

keep(i) is 0 for items without training interactions (their id rows were never trained) and,
during training, 0 with probability `id_dropout` per item and step, so the content path must
carry the item on its own (a model built without any content skips id dropout). The backbone is SASRec unchanged: the fused table takes the place of
its item embedding for both the input sequence and the output scores.

Content tensors are buffers, so they travel in the state dict and the ONNX graph. `export_view`
folds the whole fused table into one constant (N + FIRST_TOKEN, D) tensor: the served graph is
as cheap as plain SASRec. Adding items means recomputing those buffers from the item table and
exporting again (trainer/families/content.py `add_items`), not retraining.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

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
    content_loss: float = 0.0  # training: weight of the content-only softmax (see auxiliary_loss)
    content_bias: bool = False  # add a per-item score bias predicted from content alone
    num_attributes: int = 2  # attribute vocabulary size, PAD and OOV included
    max_attributes: int = 1  # attribute tokens per item (padded)
    text_buckets: int = 2  # hashed word buckets, PAD included
    max_words: int = 1  # words per item (padded)
    vector_dim: int = 0  # width of the precomputed item vectors; 0 = none

    def sasrec(self) -> SASRecConfig:
        return SASRecConfig(
            num_items=self.num_items,
            max_len=self.max_len,
            hidden=self.hidden,
            heads=self.heads,
            layers=self.layers,
            inner=self.inner,
            dropout=self.dropout,
        )


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
        self.bias_head = nn.Linear(d, 1) if cfg.content_bias else None
        self.register_buffer("attrs", torch.zeros(rows, cfg.max_attributes, dtype=torch.int64))
        self.register_buffer("words", torch.zeros(rows, cfg.max_words, dtype=torch.int64))
        self.register_buffer("vectors", torch.zeros(rows, max(cfg.vector_dim, 1)))
        known = torch.ones(rows, 1)
        known[:FIRST_TOKEN] = 0.0
        self.register_buffer("known", known)
        # Set by export_view: the whole table (and bias) as constants (not saved in the state dict).
        self.register_buffer("frozen", None, persistent=False)
        self.register_buffer("frozen_bias", None, persistent=False)

    def set_content(self, attrs: torch.Tensor, words: torch.Tensor, vectors: torch.Tensor, known: torch.Tensor) -> None:
        """Replaces the content buffers (shapes as in the class docstring, same sizes as configured)."""
        for name, value in (("attrs", attrs), ("words", words), ("vectors", vectors), ("known", known)):
            current = getattr(self, name)
            if tuple(value.shape) != tuple(current.shape):
                raise ValueError(f"{name} has shape {tuple(value.shape)}, the model expects {tuple(current.shape)}")
            current.copy_(value.to(current.dtype))

    def content(self) -> torch.Tensor:
        """(R, D): the content part of every item's vector."""
        return self.content_of(self.attrs, self.words, self.vectors)

    def content_of(self, attrs: torch.Tensor, words: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        """Content vectors of any items encoded by the same spec: attrs (M, A), words (M, W),
        vectors (M, V) -> (M, D). Items outside the table (new arrivals) are scored this way."""

        def masked_mean(emb: nn.Embedding, tokens: torch.Tensor) -> torch.Tensor:
            mask = (tokens != PAD).unsqueeze(-1).float()  # (M, T, 1)
            return (emb(tokens) * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (M, D)

        parts = [masked_mean(self.attr_emb, attrs), masked_mean(self.word_emb, words), self.vector_proj(vectors)]
        return self.mix(torch.cat(parts, dim=-1))  # (M, D)

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

    def bias(self) -> torch.Tensor | None:
        """(R,) score bias of every item from its content alone (row PAD 0); None without a bias head."""
        if self.frozen_bias is not None or self.bias_head is None:
            return self.frozen_bias
        return self.content_bias(self.content()).masked_fill(
            torch.arange(len(self.attrs), device=self.attrs.device) == PAD, 0.0
        )

    def content_bias(self, content: torch.Tensor) -> torch.Tensor | float:
        """content (M, D) -> (M,) score bias; 0.0 without a bias head."""
        return 0.0 if self.bias_head is None else self.bias_head(content).squeeze(-1)


class ContentSASRec(SASRec):
    """SASRec over fused id + content item vectors (see module docstring)."""

    def __init__(self, cfg: ContentSASRecConfig):
        super().__init__(cfg.sasrec())
        self.content_cfg = cfg
        self.item_emb = FusedItemEmbedding(cfg)

    def auxiliary_loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """content_loss * cross-entropy of the targets against every item's content vector alone.

        inputs, targets (B, L) as in trainer/families/losses.py. The main loss ranks fused (id + content)
        vectors; this one ranks content vectors only, against each other, which is exactly how new
        items compete on a "new arrivals" shelf. 0 (no work) when content_loss is 0 or the
        model has no content.
        """
        if not self.content_cfg.content_loss or not self.item_emb.has_content():
            return torch.zeros((), device=inputs.device)
        mask = targets != PAD
        h = self.encode(inputs)[mask]  # (M, D)
        items = self.item_emb.content()[FIRST_TOKEN:]  # (N, D)
        return self.content_cfg.content_loss * F.cross_entropy(
            self.score_content(h, items), targets[mask] - FIRST_TOKEN
        )

    def score_content(self, hidden: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
        """hidden (U, D), content (S, D) from `item_emb.content_of` -> (U, S): the scores items
        with that content and no id embedding get (new items, as add_items serves them)."""
        return hidden @ content.T + self.item_emb.content_bias(content)

    def output_bias(self) -> torch.Tensor | None:
        bias = self.item_emb.bias()
        return None if bias is None else bias[FIRST_TOKEN:]

    def score(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (..., D) -> (..., N): dot product with every fused item vector, plus the content bias."""
        scores = hidden @ self.item_embeddings().T
        bias = self.output_bias()
        return scores if bias is None else scores + bias

    def export_view(self) -> ContentSASRec:
        """An equivalent eval-mode copy whose fused item table is one constant tensor."""
        view = copy.deepcopy(self).eval()
        with torch.no_grad():
            table = view.item_emb.weight.detach().clone()
            bias = view.item_emb.bias()
        view.item_emb.frozen = table
        view.item_emb.frozen_bias = None if bias is None else bias.detach().clone()
        return view
