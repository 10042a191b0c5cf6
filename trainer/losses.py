"""Losses, kept apart from the models: a model maps tensors to tensors, a loss judges them."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from recsys.schema import FIRST_TOKEN, PAD

__all__ = ["next_item_cross_entropy"]


def next_item_cross_entropy(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Full-catalogue softmax cross-entropy at every non-padded position of a sequential model.

    inputs, targets (B, L) tokens, left-padded: targets[b, t] is the item after inputs[b, :t+1];
    PAD targets are ignored. The model provides encode (B, L) -> (B, L, D) and score (.., D) -> (.., N).
    """
    hidden = model.encode(inputs)  # (B, L, D)
    mask = targets != PAD
    logits = model.score(hidden[mask])  # (M, N)
    return F.cross_entropy(logits, targets[mask] - FIRST_TOKEN)
