"""GRU4Rec: session-based recommendation with recurrent networks (Hidasi et al., 2016),
in its next-item form with full-catalogue cross-entropy (as RecBole trains it).

Padding inside the graph: the left-padded input is right-aligned with a gather, so the GRU
reads each history from its first real item and pads can only follow it; hidden states are
gathered back to the input's positions. No pack_padded_sequence, so the ONNX graph is the
same computation for any batch and length.

Event kinds (`num_events` > 0): each position's event-kind embedding is added to its item
embedding before the GRU reads it (see trainer/models/sasrec.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from recsys.schema import FIRST_TOKEN, PAD
from trainer.models.sasrec import with_events


@dataclass(frozen=True)
class GRU4RecConfig:
    num_items: int  # real items; the embedding table has num_items + FIRST_TOKEN rows
    max_len: int = 50  # most recent items the model reads
    hidden: int = 64  # item embedding width D (the GRU state is projected back to D)
    gru_hidden: int = 128  # GRU state width
    layers: int = 1  # stacked GRU layers
    dropout: float = 0.3  # on item embeddings (the GRU's input)
    out_dropout: float = 0.0  # on the GRU's output states, before the projection to D
    num_events: int = 0  # event kinds read beside the items (table of num_events + FIRST_TOKEN rows); 0 = none


def right_align(item_seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) left-padded -> (right-padded (B, L), number of pads per row (B, 1))."""
    l = item_seq.shape[1]
    pads = (item_seq == PAD).sum(dim=1, keepdim=True)  # (B, 1)
    idx = torch.arange(l, device=item_seq.device).view(1, l) + pads  # (B, L)
    shifted = torch.gather(item_seq, 1, idx.clamp(max=l - 1))
    return shifted.masked_fill(idx > l - 1, PAD), pads


def shift_left(values: torch.Tensor, pads: torch.Tensor) -> torch.Tensor:
    """values (B, L) aligned with a left-padded sequence -> moved as right_align moved it."""
    l = values.shape[1]
    idx = torch.arange(l, device=values.device).view(1, l) + pads  # (B, L)
    return torch.gather(values, 1, idx.clamp(max=l - 1)).masked_fill(idx > l - 1, PAD)


class GRU4Rec(nn.Module):
    def __init__(self, cfg: GRU4RecConfig):
        super().__init__()
        self.cfg = cfg
        self.item_emb = nn.Embedding(cfg.num_items + FIRST_TOKEN, cfg.hidden, padding_idx=PAD)
        self.emb_drop = nn.Dropout(cfg.dropout)
        self.gru = nn.GRU(cfg.hidden, cfg.gru_hidden, num_layers=cfg.layers, batch_first=True, bias=False)
        self.out_drop = nn.Dropout(cfg.out_dropout)
        self.proj = nn.Linear(cfg.gru_hidden, cfg.hidden)
        # Created last, so the other layers draw the same random init with or without kinds.
        self.event_emb = (
            nn.Embedding(cfg.num_events + FIRST_TOKEN, cfg.hidden, padding_idx=PAD) if cfg.num_events else None
        )

    def encode(self, item_seq: torch.Tensor, history_events: torch.Tensor | None = None) -> torch.Tensor:
        """item_seq (B, L) left-padded[, history_events (B, L) their event-kind tokens, required
        when the model reads kinds] -> hidden (B, L, D) at the input's positions (pads: 0)."""
        b, l = item_seq.shape
        aligned, pads = right_align(item_seq)
        kinds = shift_left(history_events, pads) if history_events is not None else None
        x = with_events(self.item_emb(aligned), self.event_emb, kinds)  # (B, L, D)
        out, _ = self.gru(self.emb_drop(x))  # (B, L, G), real items first
        out = self.proj(self.out_drop(out))  # (B, L, D)
        back = (torch.arange(l, device=item_seq.device).view(1, l) - pads).clamp(min=0)  # (B, L)
        hidden = torch.gather(out, 1, back.unsqueeze(-1).expand(b, l, out.shape[-1]))
        return hidden * (item_seq != PAD).unsqueeze(-1)

    def item_embeddings(self) -> torch.Tensor:
        return self.item_emb.weight[FIRST_TOKEN:]

    def score(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (..., D) -> (..., N)."""
        return hidden @ self.item_embeddings().T

    def output_embeddings(self) -> torch.Tensor:
        """(N, D): what `score` multiplies hidden states with."""
        return self.item_embeddings()

    def output_bias(self) -> torch.Tensor | None:
        return None

    def output_rows(self, cols: torch.Tensor) -> torch.Tensor:
        """cols (...) item columns -> (..., D) their rows of `output_embeddings`, read by lookup
        (sparse gradients when `item_emb.sparse`: sampled losses touch only these rows)."""
        return F.embedding(cols + FIRST_TOKEN, self.item_emb.weight, sparse=self.item_emb.sparse)

    def forward(self, item_seq: torch.Tensor, history_events: torch.Tensor | None = None) -> torch.Tensor:
        """item_seq (B, L)[, history_events (B, L)] -> scores (B, N)."""
        return self.score(self.encode(item_seq, history_events)[:, -1, :])
