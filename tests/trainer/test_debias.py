"""Popularity-debiased training: logit adjustment, log-Q correction on/off, popularity-weighted
negatives. An item-bias-only model on skewed targets shows what each option learns."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from recsys.schema import FIRST_TOKEN
from trainer.families.losses import NegativeSampler, log_prior, next_item_loss
from trainer.families.next_item import TrainConfig

N = 30


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread avoids paying for thread hand-offs on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class BiasOnly(nn.Module):
    """Scores = one learned bias per item, whatever the history: it can learn popularity and nothing else."""

    def __init__(self, n: int):
        super().__init__()
        self.emb = nn.Parameter(torch.zeros(n, 1), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(n))

    def encode(self, inputs: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*inputs.shape, 1)  # (B, L, 1)

    def output_embeddings(self) -> torch.Tensor:
        return self.emb

    def output_bias(self) -> torch.Tensor:
        return self.bias

    def score(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.emb.T + self.bias


def _skewed_targets(rng: np.random.Generator, rows: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Zipf-like popularity: item i drawn with probability ~ 1 / (i + 1)."""
    p = 1.0 / np.arange(1, N + 1)
    p /= p.sum()
    cols = rng.choice(N, size=rows, p=p)
    counts = torch.from_numpy(np.bincount(cols, minlength=N))
    targets = torch.from_numpy(cols + FIRST_TOKEN).view(-1, 1)
    return targets, counts


def _learned_bias(loss: str, counts, targets, *, steps: int = 300, **kwargs) -> np.ndarray:
    torch.manual_seed(0)
    model = BiasOnly(N)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    inputs = torch.ones_like(targets)
    for _ in range(steps):
        opt.zero_grad()
        next_item_loss(model, inputs, targets, loss=loss, **kwargs).backward()
        opt.step()
    b = model.bias.detach().numpy()
    return b - b.mean()


def test_log_prior_is_the_log_training_frequency():
    prior = log_prior(torch.tensor([3, 1, 0]))
    assert prior.tolist() == pytest.approx([math.log(3 / 5), math.log(1 / 5), math.log(1 / 5)])  # unseen count 1


def test_logit_adjustment_adds_tau_log_prior_to_the_training_logits():
    torch.manual_seed(0)
    model = BiasOnly(4)
    with torch.no_grad():
        model.bias.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))
    prior = log_prior(torch.tensor([10, 5, 1, 4]))
    targets = torch.tensor([[FIRST_TOKEN + 1, FIRST_TOKEN + 3]])
    inputs = torch.ones_like(targets)
    got = next_item_loss(model, inputs, targets, debias=0.7, prior=prior)
    logits = model.bias.detach().expand(2, -1) + 0.7 * prior
    assert got.item() == pytest.approx(F.cross_entropy(logits, torch.tensor([1, 3])).item(), rel=1e-6)
    with pytest.raises(ValueError, match="prior"):
        next_item_loss(model, inputs, targets, debias=0.7)


def test_plain_training_learns_popularity_and_logit_adjustment_removes_it():
    targets, counts = _skewed_targets(np.random.default_rng(0))
    log_p = np.log(counts.numpy() / counts.sum().item())
    plain = _learned_bias("ce", counts, targets)
    debiased = _learned_bias("ce", counts, targets, debias=1.0, prior=log_prior(counts))
    assert np.corrcoef(plain, log_p)[0, 1] > 0.95  # plain scores rank by popularity
    assert plain.std() > 0.5
    assert debiased.std() < 0.25 * plain.std()  # tau = 1: the prior explains it all, the model adds ~nothing


def test_logq_correction_keeps_popularity_and_its_absence_pushes_popular_items_down():
    targets, counts = _skewed_targets(np.random.default_rng(1))
    log_p = np.log(counts.numpy() / counts.sum().item())
    sampler = NegativeSampler(counts, "popularity", alpha=1.0)
    corrected = _learned_bias("sampled_softmax", counts, targets, sampler=sampler, negatives=10)
    uncorrected = _learned_bias("sampled_softmax", counts, targets, sampler=sampler, negatives=10, logq=False)
    # with log-Q the sampled softmax estimates the full one: biases follow log popularity
    assert np.corrcoef(corrected, log_p)[0, 1] > 0.9
    # without it, popular items are drawn as negatives as often as they are targets: popularity is gone
    assert abs(np.corrcoef(uncorrected, log_p)[0, 1]) < 0.6
    assert uncorrected.std() < 0.5 * corrected.std()


def test_popularity_sampler_follows_popularity_to_the_alpha():
    counts = torch.tensor([100, 10, 1, 0])
    flat = NegativeSampler(counts, "popularity", alpha=0.0)
    assert flat.probs.tolist() == pytest.approx([0.25] * 4)
    sharp = NegativeSampler(counts, "popularity", alpha=1.0)
    assert sharp.probs.tolist() == pytest.approx([100 / 112, 10 / 112, 1 / 112, 1 / 112])  # unseen count 1
    draws = sharp.sample((20000,), generator=torch.Generator().manual_seed(0))
    assert (draws == 0).float().mean().item() == pytest.approx(100 / 112, abs=0.01)
    with pytest.raises(ValueError, match="negative_alpha"):
        NegativeSampler(counts, "popularity", alpha=-1.0)


def test_train_config_checks_the_debias_settings():
    TrainConfig(popularity_debias=0.5, negative_alpha=1.0, logq_correction=False).check()
    for bad in ({"popularity_debias": -0.1}, {"negative_alpha": -1.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            TrainConfig(**bad).check()
