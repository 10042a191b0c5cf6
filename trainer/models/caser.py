"""Caser: convolutional sequence embedding (Tang & Wang, 2018), history-only variant.

Horizontal filters of heights 1..L slide over the last L item embeddings and are max-pooled;
vertical filters take weighted sums of those L rows; both are joined and projected to the
output width. No user embedding, so unseen users with a few events are served like anyone
else. Every position's window is built with `unfold`, so training reads all positions at once.

Event kinds (`num_events` > 0): each position's event-kind embedding is added to its item
embedding before the filters read it (see trainer/models/sasrec.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from recsys.schema import FIRST_TOKEN, PAD
from trainer.models.sasrec import with_events


@dataclass(frozen=True)
class CaserConfig:
    num_items: int  # real items; the embedding table has num_items + FIRST_TOKEN rows
    max_len: int = 50  # history the server sends; Caser reads only the last `window` of it
    hidden: int = 64  # item embedding width D
    window: int = 5  # L: most recent items per prediction
    horizontal: int = 16  # filters per horizontal height (heights 1..window)
    vertical: int = 4  # vertical filters
    dropout: float = 0.4  # before the projection
    num_events: int = 0  # event kinds read beside the items (table of num_events + FIRST_TOKEN rows); 0 = none


class Caser(nn.Module):
    def __init__(self, cfg: CaserConfig):
        super().__init__()
        self.cfg = cfg
        d, w = cfg.hidden, cfg.window
        self.item_emb = nn.Embedding(cfg.num_items + FIRST_TOKEN, d, padding_idx=PAD)
        self.vertical = nn.Linear(w, cfg.vertical, bias=True)  # weights over the window's rows
        self.horizontal = nn.ModuleList(nn.Linear(h * d, cfg.horizontal) for h in range(1, w + 1))
        self.drop = nn.Dropout(cfg.dropout)
        self.proj = nn.Linear(cfg.vertical * d + cfg.horizontal * w, d)
        self.out_emb = nn.Embedding(cfg.num_items + FIRST_TOKEN, d)
        self.out_bias = nn.Embedding(cfg.num_items + FIRST_TOKEN, 1)
        # Created last, so the other layers draw the same random init with or without kinds.
        self.event_emb = nn.Embedding(cfg.num_events + FIRST_TOKEN, d, padding_idx=PAD) if cfg.num_events else None

    def encode(self, item_seq: torch.Tensor, history_events: torch.Tensor | None = None) -> torch.Tensor:
        """item_seq (B, L) left-padded[, history_events (B, L) their event-kind tokens, required
        when the model reads kinds] -> hidden (B, L, D); position t sees items t-window+1..t."""
        b, l = item_seq.shape
        w, d = self.cfg.window, self.cfg.hidden
        kinds = F.pad(history_events, (w - 1, 0), value=PAD) if history_events is not None else None
        x = with_events(self.item_emb(F.pad(item_seq, (w - 1, 0), value=PAD)), self.event_emb, kinds)  # (B, L+w-1, D)
        windows = x.unfold(1, w, 1).transpose(-1, -2)  # (B, L, w, D), oldest row first
        vert = self.vertical(windows.transpose(-1, -2)).transpose(-1, -2)  # (B, L, V, D)
        feats = [vert.reshape(b, l, -1)]
        for h, conv in enumerate(self.horizontal, start=1):
            spans = windows.unfold(2, h, 1)  # (B, L, w-h+1, D, h)
            spans = spans.permute(0, 1, 2, 4, 3).reshape(b, l, w - h + 1, h * d)
            feats.append(F.relu(conv(spans)).amax(dim=2))  # (B, L, horizontal)
        z = F.relu(self.proj(self.drop(torch.cat(feats, dim=-1))))  # (B, L, D)
        return z * (item_seq != PAD).unsqueeze(-1)

    def score(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (..., D) -> (..., N) scores."""
        return hidden @ self.output_embeddings().T + self.output_bias()

    def output_embeddings(self) -> torch.Tensor:
        """(N, D): output item embeddings, apart from the input ones as in the paper."""
        return self.out_emb.weight[FIRST_TOKEN:]

    def output_bias(self) -> torch.Tensor | None:
        return self.out_bias.weight[FIRST_TOKEN:, 0]

    def output_rows(self, cols: torch.Tensor) -> torch.Tensor:
        """cols (...) item columns -> (..., D) their rows of `output_embeddings`, read by lookup
        (sparse gradients when `out_emb.sparse`: sampled losses touch only these rows)."""
        return F.embedding(cols + FIRST_TOKEN, self.out_emb.weight, sparse=self.out_emb.sparse)

    def output_bias_rows(self, cols: torch.Tensor) -> torch.Tensor:
        """cols (...) -> (...) their `output_bias` entries, by lookup as `output_rows`."""
        return F.embedding(cols + FIRST_TOKEN, self.out_bias.weight, sparse=self.out_bias.sparse)[..., 0]

    def forward(self, item_seq: torch.Tensor, history_events: torch.Tensor | None = None) -> torch.Tensor:
        """item_seq (B, L)[, history_events (B, L)] -> scores (B, N)."""
        return self.score(self.encode(item_seq, history_events)[:, -1, :])
