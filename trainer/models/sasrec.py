"""SASRec: self-attentive sequential recommendation (Kang & McAuley, 2018).

A causal Transformer encoder over the user's most recent items; the hidden state at the last
position is scored against every item embedding (shared input/output embeddings).

Export-safe by construction (see shared/NOTES.md): sequences are left-padded with PAD = 0;
masks come from `arange` comparisons; every position may attend to itself, so no attention row
is fully masked (no NaN); padded positions are zeroed after every block; positions are counted
from the end, so the most recent item always has position `max_len - 1` whatever the padded
length.

Event kinds (`num_events` > 0): each input position also reads the kind of its event (view,
purchase, ...) as a token of its own vocabulary (PAD, OOV, kinds from FIRST_TOKEN), whose
embedding is added to the item's. With `num_events` 0 the model is exactly the plain SASRec.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from recsys.schema import FIRST_TOKEN, PAD

NEG_INF = -1e9  # large finite negative: exp() underflows to 0 without producing NaN


@dataclass(frozen=True)
class SASRecConfig:
    num_items: int  # real items; the embedding table has num_items + FIRST_TOKEN rows
    max_len: int = 50  # most recent items the model reads
    hidden: int = 64  # embedding and model width D
    heads: int = 2  # attention heads H (hidden % heads == 0)
    layers: int = 2  # Transformer blocks
    inner: int = 256  # feed-forward width
    dropout: float = 0.2  # on embeddings, attention weights and block outputs
    num_events: int = 0  # event kinds read beside the items (table of num_events + FIRST_TOKEN rows); 0 = none


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        assert cfg.hidden % cfg.heads == 0, "hidden must be divisible by heads"
        self.heads = cfg.heads
        self.qkv = nn.Linear(cfg.hidden, 3 * cfg.hidden)
        self.proj = nn.Linear(cfg.hidden, cfg.hidden)
        self.attn_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, L, D), allowed (B, 1, L, L) bool -> output (B, L, D), weights (B, H, L, L)."""
        b, l, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q = q.view(b, l, self.heads, d // self.heads).transpose(1, 2)  # (B, H, L, Dh)
        k = k.view(b, l, self.heads, d // self.heads).transpose(1, 2)
        v = v.view(b, l, self.heads, d // self.heads).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.heads)  # (B, H, L, L)
        att = att.masked_fill(~allowed, NEG_INF).softmax(dim=-1)
        out = self.attn_drop(att) @ v  # (B, H, L, Dh)
        out = out.transpose(1, 2).reshape(b, l, d)
        return self.proj(out), att


class Block(nn.Module):
    """Post-norm Transformer block, as in the SASRec paper."""

    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        self.attn = CausalSelfAttention(cfg)
        self.norm1 = nn.LayerNorm(cfg.hidden)
        self.ff = nn.Sequential(nn.Linear(cfg.hidden, cfg.inner), nn.GELU(), nn.Linear(cfg.inner, cfg.hidden))
        self.norm2 = nn.LayerNorm(cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, weights = self.attn(x, allowed)
        x = self.norm1(x + self.drop(a))
        x = self.norm2(x + self.drop(self.ff(x)))
        return x, weights


class SASRec(nn.Module):
    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        self.cfg = cfg
        self.item_emb = nn.Embedding(cfg.num_items + FIRST_TOKEN, cfg.hidden, padding_idx=PAD)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.hidden)
        self.emb_norm = nn.LayerNorm(cfg.hidden)
        self.emb_drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        # Created last, so the other tables draw the same random init with or without kinds.
        self.event_emb = (
            nn.Embedding(cfg.num_events + FIRST_TOKEN, cfg.hidden, padding_idx=PAD) if cfg.num_events else None
        )

    def encode(self, item_seq: torch.Tensor, history_events: torch.Tensor | None = None) -> torch.Tensor:
        """item_seq (B, L) int64 tokens, left-padded, L <= max_len; history_events (B, L) the
        event-kind token of each position (required when the model reads kinds, else None)
        -> hidden states (B, L, D)."""
        hidden, _ = self.encode_with_attention(item_seq, history_events)
        return hidden

    def encode_with_attention(
        self, item_seq: torch.Tensor, history_events: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        b, l = item_seq.shape
        valid = item_seq != PAD  # (B, L)
        idx = torch.arange(l, device=item_seq.device)
        positions = idx + (self.cfg.max_len - l)  # the most recent item is always max_len - 1
        # (B, L), not (L,): per-sample gradients (Opacus, trainer/families/private.py) need every
        # embedding lookup to carry the batch dimension; the result is the same.
        positions = positions.unsqueeze(0).expand(b, l)
        x = with_events(self.item_emb(item_seq), self.event_emb, history_events)  # (B, L, D)
        x = x * math.sqrt(self.cfg.hidden) + self.pos_emb(positions)
        x = self.emb_drop(self.emb_norm(x)) * valid.unsqueeze(-1)
        causal = idx.view(1, l) <= idx.view(l, 1)  # (L, L): query i sees keys j <= i
        itself = idx.view(1, l) == idx.view(l, 1)
        allowed = (causal & valid.view(b, 1, l)) | itself  # (B, L, L)
        allowed = allowed.unsqueeze(1)  # (B, 1, L, L)
        weights = []
        for block in self.blocks:
            x, w = block(x, allowed)
            x = x * valid.unsqueeze(-1)
            weights.append(w)
        return x, weights

    def item_embeddings(self) -> torch.Tensor:
        """(N, D): embeddings of the real items, in model column order."""
        return self.item_emb.weight[FIRST_TOKEN:]

    def score(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (..., D) -> (..., N): dot product with every item embedding (shared weights)."""
        return hidden @ self.item_embeddings().T

    def output_embeddings(self) -> torch.Tensor:
        """(N, D): what `score` multiplies hidden states with."""
        return self.item_embeddings()

    def output_bias(self) -> torch.Tensor | None:
        return None

    def output_rows(self, cols: torch.Tensor) -> torch.Tensor:
        """cols (...) item columns -> (..., D) their rows of `output_embeddings`, read by lookup
        (sparse gradients when `item_emb.sparse`: sampled losses touch only these rows)."""
        if not isinstance(self.item_emb, nn.Embedding):  # a subclass's own table (content_sasrec)
            return self.item_embeddings()[cols]
        return F.embedding(cols + FIRST_TOKEN, self.item_emb.weight, sparse=self.item_emb.sparse)

    def forward(self, item_seq: torch.Tensor, history_events: torch.Tensor | None = None) -> torch.Tensor:
        """item_seq (B, L)[, history_events (B, L)] -> scores (B, N) of every real item as the next one."""
        return self.score(self.encode(item_seq, history_events)[:, -1, :])


def with_events(items: torch.Tensor, table: nn.Embedding | None, history_events: torch.Tensor | None) -> torch.Tensor:
    """items (B, L, D) item embeddings plus the embeddings of their event kinds (B, L) when the
    model reads kinds (`table`); ValueError when the kinds and the model disagree."""
    if table is None:
        if history_events is not None:
            raise ValueError("this model reads no event kinds (num_events = 0); pass history_events=None")
        return items
    if history_events is None:
        raise ValueError("this model reads event kinds (num_events > 0): pass history_events")
    return items + table(history_events)
