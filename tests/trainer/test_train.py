"""The training loop: options are honoured, bad settings refused, resume reaches the same result."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from recsys.schema import FIRST_TOKEN
from trainer import loop as loop_module
from trainer.checkpoint import load_checkpoint
from trainer.families.next_item import TrainConfig, fit, score_histories
from trainer.loop import lr_factor

NUM_ITEMS = 20


def ring_sequences(users=30, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(users):
        start, length = rng.integers(0, NUM_ITEMS), rng.integers(6, 15)
        out.append(np.array([(start + i) % NUM_ITEMS + FIRST_TOKEN for i in range(length)], dtype=np.int64))
    return out


SMALL = dict(max_len=6, hidden=16, batch_size=16, eval_every=1, patience=50, lr=5e-3)


@pytest.mark.parametrize("model", ["sasrec", "gru4rec", "caser"])
@pytest.mark.parametrize("loss", ["ce", "sampled_softmax", "bce", "bpr"])
def test_every_model_learns_the_ring_with_every_loss(model, loss):
    cfg = TrainConfig(model=model, loss=loss, epochs=12, negatives=5, negative_sampling="popularity", **SMALL)
    result = fit(cfg, ring_sequences(), NUM_ITEMS, progress=False)
    # random ranking of 20 items minus a few seen gives NDCG@10 around 0.3
    assert result.best_metrics["ndcg@10"] > 0.5, result.history[-1]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"loss": "hinge"}, "loss must be one of"),
        ({"optimizer": "lion"}, "optimizer must be one of"),
        ({"schedule": "step"}, "schedule must be one of"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"ema": 1.0}, "ema must be in"),
        ({"model": "bert4rec"}, "unknown model"),
    ],
)
def test_bad_settings_are_refused_by_name(override, message):
    with pytest.raises(ValueError, match=message):
        fit(TrainConfig(**{**SMALL, "epochs": 1, **override}), ring_sequences(5), NUM_ITEMS, progress=False)


def test_schedules():
    cfg = TrainConfig(epochs=10, schedule="warmup_cosine", warmup_epochs=2)
    factors = [lr_factor(cfg, e) for e in range(1, 11)]
    assert factors[0] < factors[1] < factors[2] == 1.0 and factors[-1] < 0.1
    assert lr_factor(TrainConfig(), 7) == 1.0


@pytest.mark.parametrize(
    "options",
    [
        {"optimizer": "adamw", "weight_decay": 0.01},
        {"optimizer": "adamw", "weight_decay": 0.01, "ema": 0.9},
        # sparse item gradients: SparseAdam's state goes into the checkpoint too
        {"loss": "sampled_softmax", "negatives": 5, "in_batch_negatives": 4, "clip": 1.0},
    ],
)
def test_resume_after_a_crash_reaches_the_same_model(tmp_path, crash_after_epoch, options):
    cfg = TrainConfig(epochs=6, schedule="cosine", **options, **SMALL)
    straight = fit(cfg, ring_sequences(), NUM_ITEMS, progress=False, checkpoint_dir=tmp_path / "a")

    with crash_after_epoch(3):
        fit(cfg, ring_sequences(), NUM_ITEMS, progress=False, checkpoint_dir=tmp_path / "b")
    assert load_checkpoint(tmp_path / "b")["epoch"] == 3

    resumed = fit(cfg, ring_sequences(), NUM_ITEMS, progress=False, checkpoint_dir=tmp_path / "b", resume=True)
    assert resumed.resumed_from == 3 and len(resumed.history) == 6
    assert resumed.best_epoch == straight.best_epoch
    assert resumed.settings == straight.settings
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_ema_validates_and_keeps_the_moving_average_not_the_last_weights(monkeypatch):
    """With ema, the model returned (and validated) is the weights' running average after some
    step, never the raw weights of any step; it still learns the ring."""
    steps = []
    real = loop_module.ema_update

    def recording(average, model, decay):
        before = [p.detach().clone() for p in average.parameters()]
        real(average, model, decay)
        for b, a, p in zip(before, average.parameters(), model.parameters(), strict=True):
            torch.testing.assert_close(a, decay * b + (1 - decay) * p)
        steps.append((copy.deepcopy(average.state_dict()), copy.deepcopy(model.state_dict())))

    monkeypatch.setattr(loop_module, "ema_update", recording)
    result = fit(TrainConfig(epochs=8, ema=0.8, **SMALL), ring_sequences(), NUM_ITEMS, progress=False)
    assert result.best_metrics["ndcg@10"] > 0.5
    kept = result.model.state_dict()

    def same(state):
        return all(torch.equal(kept[k], v) for k, v in state.items())

    assert steps and any(same(average) for average, _ in steps)
    assert not any(same(raw) for _, raw in steps)


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path):
    fit(TrainConfig(epochs=1, **SMALL), ring_sequences(), NUM_ITEMS, progress=False, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="another config"):
        fit(
            TrainConfig(epochs=2, **{**SMALL, "hidden": 8}),
            ring_sequences(),
            NUM_ITEMS,
            progress=False,
            checkpoint_dir=tmp_path,
            resume=True,
        )


def test_length_bucketed_batches_train_as_well():
    cfg = TrainConfig(model="sasrec", epochs=12, bucket=True, **SMALL)
    result = fit(cfg, ring_sequences(), NUM_ITEMS, progress=False)
    assert result.best_metrics["ndcg@10"] > 0.5


def test_refit_learns_the_held_out_last_events():
    """Selection holds every user's last event out; refit_epochs then trains on it too, so a
    transition seen only as a last event is learned with refit and not without."""
    rng = np.random.default_rng(1)
    late, final = FIRST_TOKEN + NUM_ITEMS - 2, FIRST_TOKEN + NUM_ITEMS - 1  # only ever: late -> final, last
    sequences = []
    for _ in range(40):
        body = [int(t) + FIRST_TOKEN for t in rng.integers(0, NUM_ITEMS - 2, size=int(rng.integers(4, 8)))]
        sequences.append(np.array([*body, late, final], dtype=np.int64))
    probe = [np.array([FIRST_TOKEN, FIRST_TOKEN + 1, late], dtype=np.int64)]

    def score_of_final(refit_epochs: int) -> float:
        cfg = TrainConfig(**{**SMALL, "epochs": 6, "patience": 50, "refit_epochs": refit_epochs})
        result = fit(cfg, sequences, NUM_ITEMS, progress=False)
        scores = score_histories(result.model, probe, cfg.max_len)[0]
        assert [r["epoch"] for r in result.history] == list(range(1, 7 + refit_epochs))
        return float(scores[final - FIRST_TOKEN] - np.median(scores))

    assert score_of_final(6) > score_of_final(0) + 1.0


def test_seen_mask_hides_each_positions_earlier_items_but_never_its_target():
    from trainer.families.losses import seen_mask

    inputs = torch.tensor([[0, 2, 3, 4], [5, 2, 5, 6]])  # tokens; 0 pads, items are token - 2
    targets = torch.tensor([[2, 3, 4, 7], [2, 5, 6, 2]])
    mask = targets != 0
    hidden = seen_mask(inputs, mask, targets[mask] - FIRST_TOKEN, 6).int().tolist()
    assert hidden == [
        [0, 0, 0, 0, 0, 0],  # input so far: padding only
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 0, 0],  # second window: item 3 seen
        [1, 0, 0, 0, 0, 0],  # target item 3 was seen before: kept
        [1, 0, 0, 1, 0, 0],
        [0, 0, 0, 1, 1, 0],  # target item 0 seen before: kept
    ]
    older = torch.tensor([[7, 0], [2, 6]])  # seen before each window: items 5; 0 and 4
    hidden = seen_mask(inputs, mask, targets[mask] - FIRST_TOKEN, 6, older).int().tolist()
    assert hidden == [
        [0, 0, 0, 0, 0, 1],
        [1, 0, 0, 0, 0, 1],
        [1, 1, 0, 0, 0, 1],
        [1, 1, 1, 0, 0, 0],  # item 5 is this row's target: kept
        [0, 0, 0, 1, 1, 0],
        [1, 0, 0, 0, 1, 0],
        [1, 0, 0, 1, 0, 0],
        [0, 0, 0, 1, 1, 0],
    ]


def test_mask_seen_lowers_the_loss_and_still_learns_the_ring():
    from trainer.families.losses import next_item_loss
    from trainer.models import MODELS

    cfg = TrainConfig(**SMALL)
    torch.manual_seed(0)
    model = MODELS["sasrec"][1](cfg.model_config(NUM_ITEMS)).eval()
    inputs = torch.tensor([[0, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]])
    targets = torch.tensor([[2, 3, 4, 5, 6, 7], [8, 9, 10, 11, 12, 13]])
    with torch.no_grad():
        plain = next_item_loss(model, inputs, targets)
        masked = next_item_loss(model, inputs, targets, mask_seen=True)
    assert masked < plain  # fewer competitors in every softmax with more than one earlier item
    result = fit(TrainConfig(**{**SMALL, "mask_seen": True, "epochs": 12}), ring_sequences(), NUM_ITEMS, progress=False)
    assert result.best_metrics["ndcg@10"] > 0.5, result.history[-1]


def test_mask_seen_gradients_equal_those_of_masking_inside_autograd():
    from torch.nn import functional as F

    from trainer.families.losses import next_item_loss, seen_mask
    from trainer.models import MODELS

    torch.manual_seed(0)
    model = MODELS["sasrec"][1](TrainConfig(**SMALL).model_config(NUM_ITEMS)).eval()
    inputs = torch.tensor([[0, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]])
    targets = torch.tensor([[2, 3, 4, 5, 6, 7], [8, 9, 10, 11, 12, 13]])
    older = torch.tensor([[15, 16], [3, 0]])

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    fast = grads(next_item_loss(model, inputs, targets, older, mask_seen=True))
    mask = targets != 0
    pos = targets[mask] - FIRST_TOKEN
    logits = model.score(model.encode(inputs)[mask]).masked_fill(seen_mask(inputs, mask, pos, NUM_ITEMS, older), -1e9)
    torch.testing.assert_close(fast, grads(F.cross_entropy(logits, pos)))
