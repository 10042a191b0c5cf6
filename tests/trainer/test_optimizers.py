"""Every optimiser the document names trains a small model and lowers its loss."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.schema import FIRST_TOKEN
from trainer.families.next_item import TrainConfig, fit
from trainer.loop import make_optimizer

NUM_ITEMS = 30


def sequences(users: int = 120) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(users):
        start = rng.integers(0, NUM_ITEMS)
        out.append(((np.arange(start, start + 8) % NUM_ITEMS) + FIRST_TOKEN).astype(np.int64))
    return out


@pytest.mark.parametrize(
    ("optimizer", "momentum", "lr"),
    [("adam", 0.9, 1e-2), ("adamw", 0.9, 1e-2), ("sgd", 0.9, 0.2), ("sgd", 0.0, 0.5), ("gd", 0.0, 2.0)],
)
def test_each_optimizer_lowers_the_training_loss(optimizer, momentum, lr):
    cfg = TrainConfig(
        model="gru4rec",
        optimizer=optimizer,
        momentum=momentum,
        lr=lr,
        epochs=6,
        batch_size=64,
        max_len=6,
        hidden=16,
        eval_every=6,
        patience=1,
        sparse_items=False,
    )
    result = fit(cfg, sequences(), NUM_ITEMS, progress=False)
    losses = [row["loss"] for row in result.history]
    assert losses[-1] < losses[0]


def test_plain_sgd_has_no_momentum_and_gd_takes_one_step_per_epoch(monkeypatch):
    import torch
    from torch import nn

    model = nn.Linear(2, 1)
    assert make_optimizer(TrainConfig(optimizer="sgd", momentum=0.0), model).param_groups[0]["momentum"] == 0.0
    assert make_optimizer(TrainConfig(optimizer="sgd"), model).param_groups[0]["momentum"] == 0.9
    steps = []
    real_step = torch.optim.SGD.step
    monkeypatch.setattr(torch.optim.SGD, "step", lambda self, *a, **k: steps.append(1) or real_step(self, *a, **k))
    cfg = TrainConfig(model="gru4rec", optimizer="gd", lr=1.0, epochs=3, batch_size=16, max_len=6, hidden=8)
    fit(cfg, sequences(), NUM_ITEMS, progress=False)
    assert len(steps) == 3  # 120 users' windows in batches of 16, one step per epoch


def test_momentum_out_of_range_is_refused():
    with pytest.raises(ValueError, match="momentum"):
        TrainConfig(momentum=1.0).check()
