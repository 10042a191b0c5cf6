"""Differentially private training (DP-SGD through Opacus) of next-item models, user-level.

The privacy unit is the user: each step samples users independently with probability
q = 1 / ceil(users / expected_batch) (Poisson sampling, what the accountant assumes), takes one random
window of each sampled user's training sequence, and computes one loss per user (the mean
cross-entropy over that window). Opacus clips each user's gradient to `max_grad_norm` and adds
Gaussian noise calibrated so that after `epochs` passes the whole run is (ε, δ)-DP for
`target_epsilon` and δ (default 1 / (10 · users)). Everything the model ever sees of a user
goes through that one clipped gradient per step, so the guarantee covers all of a user's events.

Seen items stay in every softmax here (`TrainConfig.mask_seen` is not applied).

Two things differ from `train.fit`, both for the guarantee:
- the run has a fixed length and the final model is kept: choosing an epoch on the users'
  validation events would spend privacy the accountant does not count. Validation metrics
  are computed once, at the end, for the report (they are not private themselves);
- the output layer is untied from the input embedding (`UntiedNextItem`): Opacus computes
  per-sample gradients per module call, and a tied table used again as a plain matrix in the
  scores would lose that half of its gradient.

The noise comes from torch's generator, seeded for reproducibility; Opacus's `secure_mode`
(a cryptographically secure generator) needs torchcsprng, which is not installed here: use it
for a production release.

Opacus accepts SASRec as it is (its attention is built from nn.Linear; only
nn.MultiheadAttention would need Opacus's replacement); GRU4Rec's nn.GRU, Caser's convolutions
over the sequence and content_sasrec's shared content encoder are not supported here.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from recsys.schema import FIRST_TOKEN, PAD
from trainer import distributed
from trainer.data.batches import last_window
from trainer.families.next_item import TrainConfig, build_model, validate
from trainer.loop import FitResult, init_weights, make_optimizer
from trainer.loop import fit as run_loop

__all__ = ["PRIVATE_MODELS", "PrivacyConfig", "PrivateFamily", "PrivateFitResult", "UntiedNextItem", "fit_private"]

# content_sasrec is not here: its item table is computed from buffers once per step, with no
# batch dimension, so Opacus cannot attribute the content encoder's gradient to users.
PRIVATE_MODELS = ("sasrec",)


@dataclass(frozen=True)
class PrivacyConfig:
    target_epsilon: float = 8.0  # ε the whole run may spend
    delta: float | None = None  # δ; None = 1 / (10 · number of users)
    max_grad_norm: float = 1.0  # per-user gradient clipping bound C
    expected_batch: int = 256  # about the users per step: sampling rate q = 1 / ceil(users / expected_batch)
    accountant: str = "prv"  # Opacus accountant: prv | rdp

    def check(self) -> None:
        """Raises ValueError naming the first bad setting."""
        if not self.target_epsilon > 0 or not math.isfinite(self.target_epsilon):
            raise ValueError(f"target_epsilon must be a finite number > 0; got {self.target_epsilon}")
        if self.delta is not None and not 0 < self.delta < 1:
            raise ValueError(f"delta must be in (0, 1); got {self.delta}")
        if not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0; got {self.max_grad_norm}")
        if self.expected_batch < 1:
            raise ValueError(f"expected_batch must be >= 1; got {self.expected_batch}")
        if self.accountant not in ("prv", "rdp"):
            raise ValueError(f"accountant must be prv or rdp; got {self.accountant!r}")


PrivateFitResult = FitResult  # what fit_private returns; `.privacy` holds the spent budget


class UntiedNextItem(nn.Module):
    """A sequential model's encoder with its own output layer: scores = hidden @ W.T, W (N, D)."""

    def __init__(self, body: nn.Module, num_items: int, hidden: int):
        super().__init__()
        self.body = body
        self.head = nn.Linear(hidden, num_items, bias=False)

    def encode(self, item_seq: torch.Tensor) -> torch.Tensor:
        """item_seq (B, L) -> hidden (B, L, D)."""
        return self.body.encode(item_seq)

    def score(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (..., D) -> (..., N)."""
        return self.head(hidden)

    def output_embeddings(self) -> torch.Tensor:
        return self.head.weight

    def output_bias(self) -> torch.Tensor | None:
        return None

    def forward(self, item_seq: torch.Tensor) -> torch.Tensor:
        """item_seq (B, L) -> scores (B, N) of every item as the next one."""
        return self.score(self.encode(item_seq)[:, -1, :])


def user_windows(seqs: list[np.ndarray], users: np.ndarray, max_len: int, rng: np.random.Generator):
    """One random window per user: inputs, targets (B, max_len) int64, left-padded."""
    inputs = np.full((len(users), max_len), PAD, dtype=np.int64)
    targets = np.full((len(users), max_len), PAD, dtype=np.int64)
    for row, u in enumerate(users):
        s = seqs[u]
        end = len(s) - 1 if len(s) - 1 <= max_len else int(rng.integers(max_len, len(s)))  # last target index
        start = max(0, end - max_len)
        inputs[row] = last_window(s[start:end], max_len)
        targets[row] = last_window(s[start + 1 : end + 1], max_len)
    return torch.from_numpy(inputs), torch.from_numpy(targets)


def per_user_loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B,) mean cross-entropy over each window's non-padded targets."""
    logits = model.score(model.encode(inputs))  # (B, L, N)
    mask = targets != PAD
    ce = F.cross_entropy(logits.transpose(1, 2), (targets - FIRST_TOKEN).clamp(min=0), reduction="none")  # (B, L)
    return (ce * mask).sum(1) / mask.sum(1).clamp(min=1)


class PrivateFamily:
    """DP-SGD over users: Opacus owns the sampler (Poisson over users) and the optimiser
    (per-user clipping and noise); the loop (trainer/loop.py) owns the rest. No selection: the
    final model is kept and validated once (see the module docstring)."""

    unit = "users"
    select = None
    higher_is_better = True
    objective = None

    def __init__(
        self,
        cfg: TrainConfig,
        privacy: PrivacyConfig,
        sequences: list[np.ndarray],
        num_items: int,
        model: nn.Module | None = None,
    ):
        cfg.check()
        privacy.check()
        cfg = cfg.resolved(num_items)
        if cfg.optimizer == "gd":
            raise ValueError("private training steps once per Poisson-sampled batch: optimizer gd does not apply")
        if cfg.model not in PRIVATE_MODELS:
            raise ValueError(f"private training supports {', '.join(PRIVATE_MODELS)}; got {cfg.model!r}")
        if cfg.loss != "ce":
            raise ValueError("private training uses the full-catalogue cross-entropy (loss = ce)")
        if cfg.mask_seen:
            raise ValueError("private training does not mask seen items (mask_seen); leave it unset or false")
        if cfg.ema:
            raise ValueError("private training keeps its final weights; ema is not supported with it")
        if cfg.refit_epochs or cfg.clip:
            raise ValueError(
                "private training bounds each user's gradient itself (max_grad_norm); "
                "refit_epochs and clip are not supported with it"
            )
        self.cfg, self.config, self.num_items, self.prebuilt = cfg, privacy, num_items, model
        self.train_seqs = [s[:-1] for s in sequences if len(s) >= 3]
        val = [(s[:-1], s[-1]) for s in sequences if len(s) >= 3]
        if not self.train_seqs:
            raise ValueError("private training needs users with at least 3 events")
        self.val_histories = [h for h, _ in val]
        self.val_targets = np.array([t for _, t in val], dtype=np.int64)
        self.users = len(self.train_seqs)
        self.delta = privacy.delta if privacy.delta is not None else 1.0 / (10 * self.users)
        self.privacy: dict = {}
        self.steps = 0

    def build_model(self) -> nn.Module:
        body = self.prebuilt if self.prebuilt is not None else build_model(self.cfg, self.num_items)
        net = UntiedNextItem(body, self.num_items, body.cfg.hidden)
        init_weights(net, self.cfg.init)
        return net

    def make_optimizer(self, cfg: TrainConfig, step: nn.Module) -> torch.optim.Optimizer:
        """The loop's optimiser made private: Opacus hooks the model and draws the batches."""
        try:
            from opacus import PrivacyEngine
        except ImportError:
            raise ValueError("private training needs Opacus: pip install 'recsys[private]'") from None
        net = step.model
        users = torch.utils.data.TensorDataset(torch.arange(self.users))
        loader = torch.utils.data.DataLoader(users, batch_size=min(self.config.expected_batch, self.users))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Secure RNG turned off")  # see the module docstring
            # the RDP bound used to bracket the noise may be looser than possible: conservative, not wrong
            warnings.filterwarnings("ignore", message="Optimal order is the")
            self.engine = PrivacyEngine(accountant=self.config.accountant)
            self.dp_net, optimizer, self.loader = self.engine.make_private_with_epsilon(
                module=net,
                optimizer=make_optimizer(cfg, net),
                data_loader=loader,
                target_epsilon=self.config.target_epsilon,
                target_delta=self.delta,
                epochs=cfg.epochs,
                max_grad_norm=self.config.max_grad_norm,
                poisson_sampling=True,
            )
        # Opacus's hooks on the first layers, whose inputs are token ids, warn at every backward
        # pass of this process from now on: expected and harmless
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        self.optimizer = optimizer
        return optimizer

    def batches(self, rng: np.random.Generator, full: bool = False):
        """One random window per sampled user; an empty Poisson draw releases nothing."""
        for (users,) in self.loader:
            if len(users) == 0:
                self.optimizer.zero_grad(set_to_none=True)
                continue
            self.steps += 1
            yield user_windows(self.train_seqs, users.numpy(), self.cfg.max_len, rng)

    def count(self, batch) -> int:
        return len(batch[0])

    def loss(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return per_user_loss(model, inputs, targets).mean()

    def validate(self, model: nn.Module) -> dict[str, float]:
        return validate(model, self.val_histories, self.val_targets, self.num_items, self.cfg)

    def fingerprint(self) -> dict:
        return {"users": self.users, "num_items": self.num_items}

    def finish(self, net: nn.Module) -> None:
        """The privacy spent, then the model freed of Opacus's hooks and per-sample gradients."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Optimal order is the")
            spent = self.engine.get_epsilon(self.delta)
        self.privacy = {
            "mechanism": "DP-SGD (Opacus), Poisson sampling, per-user clipping",
            "unit": "user",
            "epsilon": round(float(spent), 4),
            "delta": self.delta,
            "target_epsilon": self.config.target_epsilon,
            "noise_multiplier": round(float(self.optimizer.noise_multiplier), 4),
            "max_grad_norm": self.config.max_grad_norm,
            "sample_rate": round(float(self.loader.sample_rate), 6),
            "steps": self.steps,
            "epochs": self.cfg.epochs,
            "users": self.users,
            "accountant": self.config.accountant,
            "config": asdict(self.config),
        }
        self.dp_net.remove_hooks()
        _strip_opacus(net)


def fit_private(
    cfg: TrainConfig,
    privacy: PrivacyConfig,
    sequences: list[np.ndarray],
    num_items: int,
    *,
    progress: bool = True,
    model: nn.Module | None = None,
) -> FitResult:
    """DP-SGD training for exactly `cfg.epochs` epochs; returns the final model (an
    UntiedNextItem) with the privacy spent in `.privacy`. sequences as in next_item.fit: each
    user's last event is held out for the final validation and never trained on. `model`: a
    prebuilt, untrained body instead of `cfg.model` from the registry."""
    if distributed.current().enabled:
        raise ValueError("private training runs on one process: Opacus's accountant assumes one sampler")
    family = PrivateFamily(cfg, privacy, sequences, num_items, model)
    return run_loop(cfg, family, progress=progress)


def _strip_opacus(net: nn.Module) -> None:
    """Removes the per-sample gradients Opacus leaves on parameters (they hold the batch)."""
    for p in net.parameters():
        for name in ("grad_sample", "summed_grad"):
            if hasattr(p, name):
                delattr(p, name)
        p.grad = None
