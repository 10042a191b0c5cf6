"""Training whose cost per step does not grow with the catalogue: loss auto, the sampled softmax's
shared and in-batch negatives, sparse item gradients, bf16, chunked validation, progress."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from recsys.schema import FIRST_TOKEN
from trainer.families.losses import NegativeSampler, _log_expected_count, next_item_loss
from trainer.families.next_item import NextItemFamily, TrainConfig, fit, validate
from trainer.loop import clip_grad_norm, make_optimizer
from trainer.models import SASRec, SASRecConfig

NUM_ITEMS = 20
SMALL = dict(max_len=6, hidden=16, batch_size=16, eval_every=1, patience=50, lr=5e-3)


def ring_sequences(users=30, items=NUM_ITEMS, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(users):
        start, length = rng.integers(0, items), rng.integers(6, 15)
        out.append(np.array([(start + i) % items + FIRST_TOKEN for i in range(length)], dtype=np.int64))
    return out


def test_auto_picks_ce_up_to_the_threshold_and_sampled_above_it():
    assert TrainConfig().loss == "auto"
    assert TrainConfig(sampled_above_items=20).resolved(20).loss == "ce"
    assert TrainConfig(sampled_above_items=19).resolved(20).loss == "sampled_softmax"
    assert TrainConfig(loss="bpr", sampled_above_items=1).resolved(20).loss == "bpr"  # an explicit loss stays
    small = fit(TrainConfig(epochs=1, sampled_above_items=50, **SMALL), ring_sequences(), NUM_ITEMS, progress=False)
    large = fit(TrainConfig(epochs=1, sampled_above_items=10, **SMALL), ring_sequences(), NUM_ITEMS, progress=False)
    assert small.settings == {"loss": "ce", "sparse_items": False, "precision": "fp32"}
    assert large.settings == {"loss": "sampled_softmax", "sparse_items": True, "precision": "fp32"}
    with pytest.raises(ValueError, match="loss auto picks sampled_softmax"):
        TrainConfig(mask_seen=True, sampled_above_items=10).resolved(20)


def test_auto_above_the_threshold_learns_the_ring_with_in_batch_negatives():
    cfg = TrainConfig(epochs=12, sampled_above_items=10, negatives=5, in_batch_negatives=8, **SMALL)
    result = fit(cfg, ring_sequences(), NUM_ITEMS, progress=False)
    assert result.settings["loss"] == "sampled_softmax"
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert result.best_metrics["ndcg@10"] > 0.5, result.history[-1]
    assert not result.model.item_emb.sparse  # dense again for export


class _Allocations(TorchDispatchMode):
    """Records the number of elements of every dense tensor an op returns."""

    def __init__(self):
        super().__init__()
        self.sizes: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.layout == torch.strided:
                self.sizes.append(t.numel())
        return out


def _largest_step_tensor(loss: str, num_items: int) -> tuple[int, int]:
    """(largest dense tensor created by one loss + backward over `num_items` items, M rows)."""
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(num_items=num_items, max_len=6, hidden=8, heads=2, layers=1, inner=16))
    model.item_emb.sparse = True
    seqs = ring_sequences(users=8, items=num_items)
    inputs = torch.from_numpy(np.stack([s[:5] for s in seqs]))
    targets = torch.from_numpy(np.stack([s[1:6] for s in seqs]))
    sampler = NegativeSampler(torch.ones(num_items), "popularity")
    with _Allocations() as seen:
        value = next_item_loss(model, inputs, targets, loss=loss, sampler=sampler, negatives=10, in_batch=4)
        value.backward()
    return max(seen.sizes), int((targets != 0).sum())


def test_a_sampled_step_builds_nothing_the_size_of_the_catalogue():
    small, m = _largest_step_tensor("sampled_softmax", 1_000)
    large, _ = _largest_step_tensor("sampled_softmax", 50_000)
    assert small == large < 1_000  # the same tensors whatever the catalogue, all far below M x N
    full, _ = _largest_step_tensor("ce", 50_000)
    assert full >= m * 50_000  # the check sees the (M, N) logits of the full softmax


def test_item_table_gradient_holds_only_the_rows_a_step_used():
    family = NextItemFamily(TrainConfig(sampled_above_items=10, negatives=3, **SMALL), ring_sequences(), NUM_ITEMS)
    model = family.build_model()
    batch = next(family.batches(np.random.default_rng(0)))
    family.loss(model, *batch).backward()
    grad = model.item_emb.weight.grad.coalesce()
    used = torch.unique(torch.cat([batch[0].flatten(), batch[1].flatten()]))
    assert grad.is_sparse and grad.indices().shape[1] <= len(used) + 3
    optimizer = make_optimizer(family.cfg, model)
    before = model.item_emb.weight.detach().clone()
    optimizer.step()
    moved = (model.item_emb.weight.detach() != before).any(dim=1).nonzero().flatten()
    assert set(moved.tolist()) <= set(grad.indices()[0].tolist())  # untouched rows keep their values


def test_popularity_sampling_follows_the_weights_and_log_q_counts_both_draws():
    sampler = NegativeSampler(torch.tensor([1.0, 3.0, 0.0, 6.0]), "popularity", alpha=1.0)
    draws = sampler.sample((200_000,), generator=torch.Generator().manual_seed(0))
    share = torch.bincount(draws, minlength=4).double() / len(draws)
    torch.testing.assert_close(share, sampler.probs.double(), atol=0.01, rtol=0)
    pos = torch.tensor([1, 1, 3, 0])  # the batch's targets: item 1 is half of them
    got = _log_expected_count(sampler, 10, pos, pos[:2], torch.tensor([1, 3]))
    expected = torch.tensor([10 * 3 / 11 + 2 * 0.5, 10 * 6 / 11 + 2 * 0.25]).log()
    torch.testing.assert_close(got, expected.float())


def test_bf16_trains_and_lowers_the_loss():
    cfg = TrainConfig(epochs=8, precision="bf16", **SMALL)
    result = fit(cfg, ring_sequences(), NUM_ITEMS, progress=False)
    assert result.settings["precision"] == "bf16"
    assert result.history[-1]["loss"] < 0.8 * result.history[0]["loss"]
    assert result.best_metrics["ndcg@10"] > 0.5
    with pytest.raises(ValueError, match="precision must be one of"):
        fit(TrainConfig(precision="fp16", **SMALL), ring_sequences(5), NUM_ITEMS, progress=False)


def test_chunked_validation_equals_one_pass():
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(num_items=NUM_ITEMS, max_len=6, hidden=8, heads=2, layers=1, inner=16))
    seqs = ring_sequences(users=40)
    histories, targets = [s[:-1] for s in seqs], np.array([s[-1] for s in seqs])
    cfg = TrainConfig(max_len=6)
    one = validate(model, histories, targets, NUM_ITEMS, cfg, chunk=1000)
    assert validate(model, histories, targets, NUM_ITEMS, cfg, chunk=7) == one


def test_validation_users_are_capped_by_a_seeded_sample():
    cfg = TrainConfig(epochs=1, valid_users=10, **SMALL)
    family = NextItemFamily(cfg, ring_sequences(), NUM_ITEMS)
    again = NextItemFamily(cfg, ring_sequences(), NUM_ITEMS)
    assert len(family.val_histories) == 10 and family.settings["valid_users"] == 10
    assert np.array_equal(family.val_targets, again.val_targets)


def test_sparse_gradients_are_clipped_like_dense_ones():
    dense = torch.nn.Embedding(10, 4)
    sparse = torch.nn.Embedding(10, 4, sparse=True)
    sparse.weight.data.copy_(dense.weight.data)
    rows = torch.tensor([1, 1, 4])
    for table in (dense, sparse):
        (table(rows) * torch.arange(4.0)).sum().backward()
    assert clip_grad_norm([dense.weight], 0.5) == pytest.approx(clip_grad_norm([sparse.weight], 0.5))
    torch.testing.assert_close(sparse.weight.grad.to_dense(), dense.weight.grad)
    assert float(dense.weight.grad.norm()) == pytest.approx(0.5, rel=1e-4)


def test_progress_shows_steps_rate_and_time_left_within_an_epoch(capsys):
    cfg = TrainConfig(epochs=1, **SMALL)
    family = NextItemFamily(cfg, ring_sequences(), NUM_ITEMS)
    yielded = len(list(family.batches(np.random.default_rng(0))))
    assert family.epoch_steps == yielded > 1
    fit(cfg, ring_sequences(), NUM_ITEMS, progress=True)
    err = capsys.readouterr().err
    inner = [int(done) for done, total in re.findall(r"(\d+)/(\d+) \[", err) if int(total) == family.epoch_steps]
    assert inner and "events/s" in err and "<" in err  # steps done / total, rate, tqdm's elapsed<left
    fit(cfg, ring_sequences(), NUM_ITEMS, progress=False)
    assert capsys.readouterr().err == ""
