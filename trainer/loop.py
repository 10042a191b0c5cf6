"""The one training loop every model family uses.

    fit(cfg, family):  seed -> family.build_model() -> for each epoch:
        family.batches(rng) -> family.loss -> backward -> clip -> optimiser step -> EMA
        every `eval_every` epochs: family.validate(kept model) -> keep the best state
        -> checkpoint (exact resume) -> stop after `patience` validations without improvement
    then optionally `refit_epochs` more on every example (validation ones included).

A family (see `Family`) supplies only its model, its batches, its loss and its validation;
seeding, optimiser and schedule, EMA, gradient clipping, early stopping, best-state keeping,
checkpoints, DDP (trainer/distributed.py) and the progress bar live here, once.
"""

from __future__ import annotations

import copy
import math
import os
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from trainer import distributed
from trainer.checkpoint import load_checkpoint, save_checkpoint

__all__ = [
    "Family",
    "FitResult",
    "LoopConfig",
    "ema_update",
    "fit",
    "init_weights",
    "lr_factor",
    "clip_grad_norm",
    "make_optimizer",
    "set_seed",
    "tuple_state",
]

OPTIMIZERS = ("adam", "adamw", "sgd", "gd")
SCHEDULES = ("constant", "cosine", "warmup_cosine")
INITS = ("xavier_uniform", "xavier_normal", "normal")
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class LoopConfig:
    """What the loop itself reads. Family configs extend it and set their own defaults."""

    epochs: int = 50  # upper bound; early stopping usually ends sooner
    batch_size: int = 256  # examples per step
    # adam | adamw | sgd (mini-batch, with `momentum`) | gd (full-batch gradient descent: one
    # step per epoch along the gradient of the mean loss over every example, no momentum)
    optimizer: str = "adam"
    momentum: float = 0.9  # sgd's momentum; 0 is plain stochastic gradient descent
    lr: float = 1e-3  # peak learning rate
    weight_decay: float = 0.0  # L2 (adam, sgd) or decoupled (adamw)
    schedule: str = "constant"  # constant | cosine (to 0 over `epochs`) | warmup_cosine
    warmup_epochs: int = 2  # linear warm-up length for warmup_cosine
    init: str = "xavier_uniform"  # xavier_uniform | xavier_normal | normal (N(0, 0.02))
    seed: int = 0  # seeds python, numpy and torch
    deterministic: bool = False  # torch deterministic algorithms (slower)
    eval_every: int = 1  # epochs between validations
    patience: int = 4  # validations without improvement before stopping
    # Decay of an exponential moving average of the weights, updated every step: the average
    # is what is validated, selected and exported (epoch-to-epoch noise smoothed); 0 = off.
    ema: float = 0.0
    clip: float = 0.0  # clip the gradient's global norm to this; 0 = off
    # After selection, train the chosen model this many more epochs on every example, the
    # validation ones included; 0 serves the selected model as it is. Test data is never seen.
    refit_epochs: int = 0
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    # Forward and loss under torch.autocast in bfloat16 (CPU or CUDA); weights, gradients and
    # the optimiser stay fp32. Opt-in: faster on the measured CPU but more memory, and it
    # reaches every family (docs/results/catalogue-scale.md).
    precision: str = "fp32"
    # Directory for TensorBoard event files (per epoch: loss and every validation metric, the
    # numbers report.json holds); "" writes none. MLflow gets the same when it is installed and
    # MLFLOW_TRACKING_URI is set.
    tensorboard: str = ""

    def check_loop(self) -> None:
        """Raises ValueError naming the first bad loop setting."""
        choices = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "init": INITS, "precision": PRECISIONS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        for name in ("epochs", "batch_size", "eval_every", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0; got {self.lr}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1); got {self.momentum}")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema must be in [0, 1); got {self.ema}")
        for name in ("clip", "weight_decay"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0; got {getattr(self, name)}")
        for name in ("refit_epochs", "warmup_epochs", "threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0; got {getattr(self, name)}")


class Family(Protocol):
    """What a model family gives the loop.

    `batches` yields tuples of tensors whose first dimension is the batch (DDP gives each rank
    its rows of every tensor); `loss(model, *batch)` returns a scalar. `validate(model)`
    returns {metric: value}; `select` names the metric that picks the best epoch (None: no
    selection, the final model is kept and validated once) and `higher_is_better` its sense.
    """

    select: str | None
    higher_is_better: bool
    unit: str  # what `count` counts, for the progress rate ("events", "examples", ...)
    objective: nn.Module | None  # the loss's own trained parameters (e.g. ordinal offsets), or None
    # optional `partial_steps = True`: some parameters may get no gradient in a step (DDP must not wait for them)
    # optional `epoch_steps: int`: set by `batches` before it yields its first batch, the number of
    # batches that pass will yield (the progress bar's total within an epoch)
    # optional `settings: dict`: what the family resolved from its config (e.g. the loss that ran), into FitResult
    # optional `local_batches = True`: under DDP each rank's batches are its own (per-rank data shards),
    # taken whole, and every rank yields the same number of them per pass

    def build_model(self) -> nn.Module: ...
    def batches(self, rng: np.random.Generator, full: bool = False) -> Iterator[tuple[torch.Tensor, ...]]: ...
    def count(self, batch: tuple[torch.Tensor, ...]) -> int: ...
    def loss(self, model: nn.Module, *batch: torch.Tensor) -> torch.Tensor: ...
    def validate(self, model: nn.Module) -> dict[str, float]: ...
    def fingerprint(self) -> dict[str, Any]: ...


@dataclass
class FitResult:
    model: nn.Module
    best_epoch: int
    best_metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from: int = 0  # epochs restored from a checkpoint
    members: list[dict] = field(default_factory=list)  # an ensemble's members: model, seed, best epoch, weight, metrics
    privacy: dict = field(default_factory=dict)  # DP training: what goes into the manifest's `privacy`
    settings: dict = field(default_factory=dict)  # what the family resolved from its config (family.settings)

    def summary(self, metrics: dict[str, float] | None = None) -> str:
        """One log line: the best epoch, the epochs run, the time and `metrics` (default: the best's)."""
        shown = self.best_metrics if metrics is None else metrics
        return f"best epoch {self.best_epoch} of {len(self.history)} in {self.seconds:.0f} s: " + ", ".join(
            f"{k} {v:.4f}" for k, v in shown.items()
        )


class _Step(nn.Module):
    """The family's loss as a module, so DDP sees one `forward` using every trained parameter
    (the model's and the loss's own, e.g. ordinal offsets)."""

    def __init__(self, model: nn.Module, family: Family):
        super().__init__()
        self.model = model
        self.objective = getattr(family, "objective", None)  # an nn.Module with trained parameters, or None
        self.family = family

    def forward(self, *batch: torch.Tensor) -> torch.Tensor:
        return self.family.loss(self.model, *batch)


def fit(
    cfg: LoopConfig,
    family: Family,
    *,
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    rng_offset: int = 0,
) -> FitResult:
    """Trains `family.build_model()` and returns it with the best validation state loaded.

    With `checkpoint_dir` the whole training state is saved after every epoch; `resume=True`
    continues from it (same config and data fingerprint required, else ValueError) and
    reaches the same model as an uninterrupted run. Under DDP every rank trains on its rows of
    each batch; only rank 0 validates and checkpoints, and only its result holds the best model.
    `rng_offset`: added to the seed of the numpy generator that orders the batches.
    """
    from tqdm.auto import tqdm

    set_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(cfg.deterministic)
    rng = np.random.default_rng(cfg.seed + rng_offset)
    model = family.build_model()
    dist = distributed.current()
    if dist.enabled:
        model.to(dist.device)
        torch.manual_seed(cfg.seed + dist.rank)  # own dropout masks and negatives per rank
    step = _Step(model, family)
    optimizer = getattr(family, "make_optimizer", None)
    optimizer = optimizer(cfg, step) if optimizer else make_optimizer(cfg, step)
    average = copy.deepcopy(model) if cfg.ema else None  # with ema: what is validated and kept
    kept = average if average is not None else model
    train_step = dist.wrap(step, partial=getattr(family, "partial_steps", False))
    key, sign = family.select, (1.0 if family.higher_is_better else -1.0)
    best: dict[str, Any] = {"value": -math.inf, "epoch": 0, "metrics": {}, "state": None}
    history: list[dict[str, float]] = []
    bad, first_epoch, elapsed = 0, 1, 0.0
    fingerprint = family.fingerprint()

    saved = load_checkpoint(checkpoint_dir) if (checkpoint_dir and resume) else None
    if saved is not None:
        if saved["config"] != asdict(cfg) or saved["data"] != fingerprint:
            raise ValueError(f"checkpoint in {checkpoint_dir} was made with another config or data; not resuming")
        step.load_state_dict(saved["step"])
        if average is not None:
            average.load_state_dict(saved["average"])
        optimizer.load_state_dict(saved["optimizer"])
        best, history, bad, elapsed = saved["best"], saved["history"], saved["bad"], saved["elapsed"]
        first_epoch = saved["epoch"] + 1
        rng.bit_generator.state = saved["numpy_rng"]
        torch.set_rng_state(saved["torch_rng"])
        random.setstate(tuple_state(saved["python_rng"]))

    start = time.perf_counter() - elapsed
    logbook = RunLog(cfg.tensorboard if dist.is_main else "")
    bar = tqdm(
        range(first_epoch, cfg.epochs + 1),
        disable=not (progress and dist.is_main),
        unit="epoch",
        dynamic_ncols=True,
        initial=first_epoch - 1,
        total=cfg.epochs,
    )
    for epoch in bar:
        if bad >= cfg.patience:
            break
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * lr_factor(cfg, epoch)
        row = _train_epoch(train_step, optimizer, family, cfg, rng, dist, average, show=progress and dist.is_main)
        row = {"epoch": epoch, **row}
        if key is not None and (epoch % cfg.eval_every == 0 or epoch == cfg.epochs) and dist.is_main:
            row.update(family.validate(kept.eval()))
            if sign * row[key] > best["value"]:
                best = {
                    "value": sign * row[key],
                    "epoch": epoch,
                    "metrics": dict(row),
                    "state": copy.deepcopy(kept.state_dict()),
                }
                bad = 0
            else:
                bad += 1
        bad = dist.from_main(bad)  # every rank stops when rank 0 does
        history.append(row)
        if dist.is_main:
            logbook.write(row)
        shown = {"loss": f"{row['loss']:.4f}"}
        if key in row:
            shown[key] = f"{row[key]:.4f}"
        if best["epoch"]:
            shown["best"] = f"{sign * best['value']:.4f}@{best['epoch']}"
        bar.set_postfix(shown)
        if checkpoint_dir and dist.is_main:
            save_checkpoint(
                checkpoint_dir,
                {
                    "config": asdict(cfg),
                    "data": fingerprint,
                    "epoch": epoch,
                    "step": step.state_dict(),
                    "average": average.state_dict() if average is not None else None,
                    "optimizer": optimizer.state_dict(),
                    "best": best,
                    "history": history,
                    "bad": bad,
                    "elapsed": time.perf_counter() - start,
                    "numpy_rng": rng.bit_generator.state,
                    "torch_rng": torch.get_rng_state(),
                    "python_rng": random.getstate(),
                },
            )
    bar.close()
    logbook.close()
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    elif average is not None:
        model.load_state_dict(average.state_dict())
    if cfg.refit_epochs and dist.from_main(best["state"] is not None):
        dist.copy_from_main(model)  # under DDP only rank 0 holds the selected weights
        last = history[-1]["epoch"] if history else 0
        if average is not None:
            average.load_state_dict(model.state_dict())
        for epoch in range(last + 1, last + cfg.refit_epochs + 1):
            row = _train_epoch(
                train_step, optimizer, family, cfg, rng, dist, average, full=True, show=progress and dist.is_main
            )
            history.append({"epoch": epoch, **row, "refit": True})
        if average is not None:
            model.load_state_dict(average.state_dict())
    if key is None and dist.is_main and history:  # no selection: the final model, validated once
        history[-1].update(family.validate(model.eval()))
        best = {"epoch": history[-1]["epoch"], "metrics": dict(history[-1])}
    finish = getattr(family, "finish", None)
    if finish is not None:
        finish(model)
    model.to("cpu").eval()
    return FitResult(
        model,
        best["epoch"],
        best["metrics"],
        history,
        time.perf_counter() - start,
        first_epoch - 1,
        privacy=getattr(family, "privacy", {}) or {},
        settings=dict(getattr(family, "settings", {}) or {}),
    )


class RunLog:
    """Where a run's per-epoch numbers go besides report.json: TensorBoard event files in
    `directory` (when given), and MLflow when it is installed and MLFLOW_TRACKING_URI is set."""

    def __init__(self, directory: str) -> None:
        self.board = None
        if directory:
            from torch.utils.tensorboard import SummaryWriter  # the `tensorboard` package, in the train extra

            self.board = SummaryWriter(log_dir=directory)
        self.mlflow = None
        if os.environ.get("MLFLOW_TRACKING_URI"):
            try:
                import mlflow
            except ImportError:
                mlflow = None
            self.mlflow = mlflow

    def write(self, row: dict[str, Any]) -> None:
        epoch = int(row["epoch"])
        numbers = {k: float(v) for k, v in row.items() if k != "epoch" and isinstance(v, (int, float))}
        if self.board is not None:
            for name, value in numbers.items():
                self.board.add_scalar(name, value, epoch)
        if self.mlflow is not None:
            self.mlflow.log_metrics({name.replace("@", "_at_"): v for name, v in numbers.items()}, step=epoch)

    def close(self) -> None:
        if self.board is not None:
            self.board.close()


def _train_epoch(
    train_step: nn.Module,
    optimizer: torch.optim.Optimizer,
    family: Family,
    cfg: LoopConfig,
    rng: np.random.Generator,
    dist,
    average: nn.Module | None,
    full: bool = False,
    show: bool = False,
) -> dict[str, float]:
    """One pass over `family.batches`; returns {"loss": mean over ranks, "<unit>_per_s": rate}.

    `show`: a progress bar of the pass's steps (out of `family.epoch_steps` when the family
    sets it), with the rate in the family's unit and the time left.
    """
    from tqdm.auto import tqdm

    train_step.train()
    model = train_step.module.model if hasattr(train_step, "module") else train_step.model
    device = next(model.parameters()).device
    total, steps, seen, tick = 0.0, 0, 0, time.perf_counter()
    full_batch, rows = cfg.optimizer == "gd", 0  # gd: gradients summed over the epoch, one step
    if full_batch:
        optimizer.zero_grad(set_to_none=True)
    bar = None
    local = getattr(family, "local_batches", False)
    for batch in family.batches(rng, full=full):
        if bar is None and show:
            bar = tqdm(
                total=getattr(family, "epoch_steps", None),
                unit="step",
                leave=False,
                dynamic_ncols=True,
                mininterval=0.1 if sys.stderr.isatty() else 30.0,  # a log file gets a line per 30 s, not per step
            )
        if not local and len(batch[0]) < dist.world_size:
            continue  # a tail batch too small to give every rank a row (never with one process)
        part = tuple(t.to(device) for t in batch) if local else dist.shard(*batch)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
            loss = train_step(*part)
        if full_batch:
            (loss * len(batch[0])).backward()  # each example weighs the same, whatever its batch
            rows += len(batch[0])
        else:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            _step(optimizer, model, average, cfg)
        total, steps, seen = total + loss.item(), steps + 1, seen + family.count(batch)
        if bar is not None:
            bar.update(1)
            bar.set_postfix({f"{family.unit}/s": f"{seen / max(time.perf_counter() - tick, 1e-9):,.0f}"}, refresh=False)
    if full_batch and rows:
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad /= rows
        _step(optimizer, model, average, cfg)
    if bar is not None:
        bar.refresh()  # the final count and rate, however short the epoch
        bar.close()
    rate = seen / max(time.perf_counter() - tick, 1e-9)
    return {"loss": dist.mean(total / max(steps, 1)), f"{family.unit}_per_s": round(rate)}


def _step(optimizer, model: nn.Module, average: nn.Module | None, cfg: LoopConfig) -> None:
    """Clip (when set), step, update the moving average (when kept)."""
    if cfg.clip:
        clip_grad_norm([p for g in optimizer.param_groups for p in g["params"]], cfg.clip)
    optimizer.step()
    if average is not None:
        ema_update(average, model, cfg.ema)


@torch.no_grad()
def clip_grad_norm(params: list[torch.Tensor], max_norm: float) -> float:
    """Scales the gradients of `params` so their global L2 norm is at most `max_norm`; sparse
    gradients (item tables trained with sparse updates) count their stored rows once each."""
    grads = []
    for p in params:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()  # duplicate rows summed, so the norm is the dense one
            grads.append(p.grad)
        else:
            grads.append(p.grad)
    if not grads:
        return 0.0
    norm = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(g._values() if g.is_sparse else g) for g in grads])
    )
    scale = max_norm / (float(norm) + 1e-6)
    if scale < 1.0:
        for g in grads:
            g.mul_(scale)
    return float(norm)


class SparseDenseOptimizer:
    """SparseAdam for the parameters with sparse gradients (rows a step did not touch keep their
    value and moments: a lazy update), Adam or AdamW for the rest; one object for the loop."""

    def __init__(self, sparse: list[nn.Parameter], dense: torch.optim.Optimizer, lr: float):
        self.sparse = torch.optim.SparseAdam(sparse, lr=lr)
        self.dense = dense

    @property
    def param_groups(self) -> list[dict]:
        # read each time: load_state_dict gives the parts new group dicts
        return self.sparse.param_groups + self.dense.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.sparse.zero_grad(set_to_none=set_to_none)
        self.dense.zero_grad(set_to_none=set_to_none)

    def step(self, closure=None):
        self.sparse.step()
        self.dense.step()

    def state_dict(self) -> dict:
        return {"sparse": self.sparse.state_dict(), "dense": self.dense.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.sparse.load_state_dict(state["sparse"])
        self.dense.load_state_dict(state["dense"])


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def init_weights(model: nn.Module, scheme: str) -> None:
    """Xavier (uniform or normal) or N(0, 0.02) for linear and embedding weights; zero biases."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            if scheme == "xavier_uniform":
                nn.init.xavier_uniform_(module.weight)
            elif scheme == "xavier_normal":
                nn.init.xavier_normal_(module.weight)
            else:
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()


def make_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer | SparseDenseOptimizer:
    """`cfg.optimizer` (adam | adamw | sgd | gd) at `cfg.lr` with `cfg.weight_decay`; any config with those fields.

    Embedding tables set to sparse gradients (`nn.Embedding.sparse`) get SparseAdam, which
    needs adam or adamw without weight decay (ValueError otherwise)."""
    sparse = [m.weight for m in model.modules() if isinstance(m, nn.Embedding) and m.sparse]
    taken = {id(p) for p in sparse}
    params = [p for p in model.parameters() if id(p) not in taken]
    if sparse and (cfg.optimizer in ("sgd", "gd") or cfg.weight_decay):
        raise ValueError("sparse item gradients need optimizer adam or adamw without weight_decay")
    if cfg.optimizer == "adamw":
        dense = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "sgd":
        dense = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "gd":
        dense = torch.optim.SGD(params, lr=cfg.lr, momentum=0.0, weight_decay=cfg.weight_decay)
    else:
        dense = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return SparseDenseOptimizer(sparse, dense, cfg.lr) if sparse else dense


def lr_factor(cfg: LoopConfig, epoch: int) -> float:
    """Multiplier of `lr` during 1-based `epoch`."""
    if cfg.schedule == "constant":
        return 1.0
    warm = cfg.warmup_epochs if cfg.schedule == "warmup_cosine" else 0
    if epoch <= warm:
        return epoch / (warm + 1)
    progress = (epoch - warm - 1) / max(1, cfg.epochs - warm)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def ema_update(average: nn.Module, model: nn.Module, decay: float) -> None:
    """average <- decay * average + (1 - decay) * model, parameter by parameter; buffers copied."""
    for a, p in zip(average.parameters(), model.parameters(), strict=True):
        a.lerp_(p, 1.0 - decay)
    for a, b in zip(average.buffers(), model.buffers(), strict=True):
        a.copy_(b)


def tuple_state(state):
    """random.getstate() comes back from torch.load with lists where tuples were."""
    return tuple(tuple_state(s) if isinstance(s, list) else s for s in state)
