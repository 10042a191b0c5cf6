"""An ensemble of next-item models served as one graph: the weighted sum of the members' scores.

Members are trained apart (trainer/families/ensemble.py) and only combined here. Every member scores
items as `hidden . item_vector (+ bias)`, so the weighted sum is itself such a score over the
concatenated hidden states and item vectors: the ensemble has `encode`, `output_embeddings`
and `output_bias` like any member, and ANN retrieval (trainer/export/ann.py) works on it
unchanged. Each member reads its own `max_len` most recent items of the history it is given.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Ensemble"]


class Ensemble(nn.Module):
    def __init__(self, members: list[nn.Module], weights: list[float]):
        super().__init__()
        if not members or len(members) != len(weights):
            raise ValueError(
                f"an ensemble needs one weight per member; got {len(members)} members, {len(weights)} weights"
            )
        self.members = nn.ModuleList(members)
        self.lengths = [m.cfg.max_len for m in members]
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float32))

    def encode(self, item_seq: torch.Tensor) -> torch.Tensor:
        """item_seq (B, L) -> (B, 1, sum of member widths): each member's weighted hidden state
        after the whole history (the last position only: members read different lengths)."""
        parts = [
            w * m.encode(self._recent(item_seq, n))[:, -1:, :]
            for m, n, w in zip(self.members, self.lengths, self.weights)
        ]
        return torch.cat(parts, dim=-1)

    def _recent(self, item_seq: torch.Tensor, n: int) -> torch.Tensor:
        # No slice for a member that reads as much as the ensemble: a slice that can never cut
        # would pin the exported graph's sequence axis to its full length.
        return item_seq if n >= max(self.lengths) else item_seq[:, -n:]

    def output_embeddings(self) -> torch.Tensor:
        return torch.cat([m.output_embeddings() for m in self.members], dim=-1)  # (N, sum of widths)

    def output_bias(self) -> torch.Tensor | None:
        biases = [(w, m.output_bias()) for m, w in zip(self.members, self.weights)]
        biases = [w * b for w, b in biases if b is not None]
        return torch.stack(biases).sum(0) if biases else None

    def score(self, hidden: torch.Tensor) -> torch.Tensor:
        scores = hidden @ self.output_embeddings().T
        bias = self.output_bias()
        return scores if bias is None else scores + bias

    def forward(self, item_seq: torch.Tensor) -> torch.Tensor:
        """item_seq (B, L) -> (B, N): sum over members of weight * member scores."""
        return self.score(self.encode(item_seq)[:, -1, :])
