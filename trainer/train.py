"""Training: sequences -> a sequential model -> the best-on-validation model.

The loop is one readable function (`fit`): windows -> loss -> optimizer step -> validation
every `eval_every` epochs -> keep the best state by NDCG@k -> checkpoint -> stop after
`patience` validations without improvement. Validation uses only the training file: each
user's last event is held out; a test file is never seen here.
"""

from __future__ import annotations

import copy
import functools
import math
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from recsys.schema import FIRST_TOKEN
from trainer import distributed
from trainer.batches import bucketed_batches, last_window, older_items, training_windows
from trainer.checkpoint import load_checkpoint, save_checkpoint
from trainer.losses import LOSSES, NegativeSampler, log_prior, next_item_loss
from trainer.metrics import rank_of_targets, ranking_metrics
from trainer.models import MODELS

__all__ = ["FitResult", "TrainConfig", "fit", "score_histories", "set_seed"]


@dataclass(frozen=True)
class TrainConfig:
    model: str = "sasrec"  # key of trainer.models.MODELS, or "ensemble" (of `members`)
    epochs: int = 200  # upper bound; early stopping usually ends sooner
    batch_size: int = 256  # windows per step
    bucket: bool = False  # batch windows of similar length and trim their padding (faster for long max_len)
    max_len: int = 50  # most recent items the model reads
    # Model hyperparameters; None keeps the model's own default (see trainer/models/<model>.py).
    hidden: int | None = None  # embedding width
    heads: int | None = None  # attention heads (sasrec)
    layers: int | None = None  # Transformer blocks (sasrec) or GRU layers (gru4rec)
    inner: int | None = None  # feed-forward width (sasrec)
    dropout: float | None = None  # dropout rate
    id_dropout: float | None = None  # content_sasrec: chance an item's id embedding is dropped per step
    content_loss: float | None = None  # content_sasrec: weight of the content-only softmax loss (cold start)
    min_word_items: int = 2  # content_sasrec: a title/description word counts if this many items have it
    content_bias: bool = True  # content_sasrec: add a per-item score bias predicted from content
    numeric_buckets: int = 8  # content_sasrec: quantile buckets of a numeric item feature (release year)
    vector_components: int = 0  # content_sasrec: project item vectors onto this many principal directions; 0 = as given
    # Objective
    loss: str = "ce"  # ce | sampled_softmax | bce | bpr (see trainer/losses.py)
    negatives: int = 100  # sampled items per step (sampled_softmax) or per target (bce, bpr)
    negative_sampling: str = "uniform"  # uniform | popularity (popularity ** negative_alpha)
    negative_alpha: float = 0.75  # exponent of popularity-weighted sampling (0 = uniform)
    logq_correction: bool = True  # sampled_softmax: subtract log q(item) (unbiased); false keeps the sampling bias
    popularity_debias: float = 0.0  # logit adjustment tau: train on logits + tau * log p(item); 0 = off
    # Leave what the user has already seen out of each position's softmax, as serving with
    # exclude_seen leaves it out of the ranking (ce only). None: on with ce. Turn it off for
    # data where users repeat items and recommendations include seen ones.
    mask_seen: bool | None = None
    # Optimisation
    optimizer: str = "adam"  # adam | adamw | sgd (momentum 0.9)
    lr: float = 3e-3  # peak learning rate
    weight_decay: float = 0.0  # L2 (adam, sgd) or decoupled (adamw)
    schedule: str = "constant"  # constant | cosine (to 0 over `epochs`) | warmup_cosine
    warmup_epochs: int = 2  # linear warm-up length for warmup_cosine
    init: str = "xavier_uniform"  # xavier_uniform | xavier_normal | normal
    # Selection and reproducibility
    seed: int = 0  # seeds python, numpy and torch
    deterministic: bool = False  # torch deterministic algorithms (slower)
    eval_every: int = 3  # epochs between validations
    patience: int = 4  # validations without improvement before stopping
    k: int = 10  # cut-off of the validation metric (NDCG@k selects the model)
    # After selection, train the chosen model this many more epochs on every event, the
    # validation targets included (each user's most recent event, the most telling one for
    # what comes next); 0 serves the selected model as it is. The test file is never seen.
    refit_epochs: int = 0
    # Decay of an exponential moving average of the weights, updated every step: the average
    # is what is validated, selected and exported (epoch-to-epoch noise smoothed); 0 = off.
    ema: float = 0.0
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    # Export
    ann: str = "auto"  # ANN retrieval index: auto (from 100k items), on, off (trainer/ann_export.py)
    ann_backend: str = "norm-pruned"  # norm-pruned (exact at its default alpha 1) | faiss-ivf | faiss-hnsw | usearch (recsys/ann.py)
    int8: bool = False  # also export model.int8.onnx (dynamic quantisation, quality measured)
    # model = "ensemble": one table of settings per member, each overriding the ones above for
    # that member and naming its `model` (trainer/ensemble.py); the served scores are their sum,
    # each member scaled by its scores' spread on the validation histories.
    members: tuple = ()

    @property
    def masks_seen(self) -> bool:
        return self.loss == "ce" if self.mask_seen is None else self.mask_seen

    def model_config(self, num_items: int):
        """The model's own config: the fields it shares with this one, its defaults for the rest."""
        if self.model == "ensemble":
            raise ValueError("an ensemble has no model config of its own; see trainer/ensemble.py member_configs")
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; known: {', '.join(MODELS)}")
        config_cls = MODELS[self.model][0]
        shared = {f.name for f in fields(config_cls)} & {f.name for f in fields(self)}
        given = {name: getattr(self, name) for name in shared if getattr(self, name) is not None}
        return config_cls(num_items=num_items, **given)

    def check(self) -> None:
        """Raises ValueError naming the first bad setting."""
        choices = {
            "loss": LOSSES,
            "negative_sampling": ("uniform", "popularity"),
            "optimizer": ("adam", "adamw", "sgd"),
            "schedule": ("constant", "cosine", "warmup_cosine"),
            "init": ("xavier_uniform", "xavier_normal", "normal"),
            "ann": ("auto", "on", "off"),
            "ann_backend": ("norm-pruned", "faiss-hnsw", "faiss-ivf", "usearch"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        for name in ("epochs", "batch_size", "max_len", "negatives", "eval_every", "patience", "k", "min_word_items",
                     "numeric_buckets"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0; got {self.lr}")
        if self.mask_seen and self.loss != "ce":
            raise ValueError(f"mask_seen applies to loss ce only; got loss {self.loss!r}")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema must be in [0, 1); got {self.ema}")
        if self.vector_components < 0:
            raise ValueError(f"vector_components must be >= 0; got {self.vector_components}")
        if self.refit_epochs < 0:
            raise ValueError(f"refit_epochs must be >= 0; got {self.refit_epochs}")
        for name in ("negative_alpha", "popularity_debias"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0; got {getattr(self, name)}")
        if self.model == "ensemble":
            if not self.members:
                raise ValueError("model ensemble needs `members`: one table of settings per member")
            from trainer.ensemble import member_configs

            member_configs(self)
        elif self.members:
            raise ValueError(f"`members` is for model ensemble only; model is {self.model!r}")
        else:
            self.model_config(1)


@dataclass
class FitResult:
    model: nn.Module
    best_epoch: int
    best_metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from: int = 0
    members: list[dict] = field(default_factory=list)  # an ensemble's members: model, seed, best epoch, weight, metrics


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


def make_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """`cfg.optimizer` (adam | adamw | sgd) at `cfg.lr` with `cfg.weight_decay`; any config with those fields."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(cfg: TrainConfig, epoch: int) -> float:
    """Multiplier of `lr` during 1-based `epoch`."""
    if cfg.schedule == "constant":
        return 1.0
    warm = cfg.warmup_epochs if cfg.schedule == "warmup_cosine" else 0
    if epoch <= warm:
        return epoch / (warm + 1)
    progress = (epoch - warm - 1) / max(1, cfg.epochs - warm)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def score_histories(model: nn.Module, histories: list[np.ndarray], max_len: int, batch: int = 512) -> np.ndarray:
    """Scores (U, N) of every item after each token history, in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(histories), batch):
        x = np.stack([last_window(h, max_len) for h in histories[i : i + batch]])
        out.append(model(torch.from_numpy(x).to(device)).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def validate(model: nn.Module, histories: list[np.ndarray], targets: np.ndarray, num_items: int, cfg: TrainConfig) -> dict:
    """Full-ranking metrics of `targets` (tokens) after `histories`, seen items excluded."""
    scores = score_histories(model, histories, cfg.max_len)
    excluded = np.zeros((len(histories), num_items), dtype=bool)
    for row, h in enumerate(histories):
        excluded[row, h - FIRST_TOKEN] = True
    ranks = rank_of_targets(scores, targets - FIRST_TOKEN, excluded)
    return ranking_metrics(ranks, cfg.k)


def fit(
    cfg: TrainConfig,
    sequences: list[np.ndarray],
    num_items: int,
    *,
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    model: nn.Module | None = None,
    validator=None,
    select: str | None = None,
) -> FitResult:
    """Trains on every user's sequence minus its last event; selects on that last event.

    sequences: per user, int64 tokens oldest first. Users with fewer than 3 events train but
    are not validated. With `checkpoint_dir`, the full training state is saved after every
    epoch; `resume=True` continues from it (same config required) and reaches the same result
    as an uninterrupted run. `model`: a prebuilt, untrained model to train instead of building
    `cfg.model` from the registry (content models carry their item tables from construction).
    `validator`: a callable (model in eval mode) -> {metric: value} whose metrics join every
    validation row (e.g. cold-item metrics, scripts/cold_start.py); `select` names the row metric
    that picks the best epoch (default NDCG@k of the last-event validation).

    Under DDP (trainer/distributed.py, started by torchrun) each rank trains on its slice of
    every batch; only rank 0 validates and checkpoints, and only its result holds the best model.
    """
    from tqdm.auto import tqdm

    cfg.check()
    set_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(cfg.deterministic)
    rng = np.random.default_rng(cfg.seed)
    train_seqs = [s[:-1] for s in sequences if len(s) >= 2]
    val = [(s[:-1], s[-1]) for s in sequences if len(s) >= 3]
    val_histories = [h for h, _ in val]
    val_targets = np.array([t for _, t in val], dtype=np.int64)
    counts = np.bincount(np.concatenate(train_seqs) - FIRST_TOKEN, minlength=num_items) if train_seqs else np.ones(num_items)
    sampler = None if cfg.loss == "ce" else NegativeSampler(torch.from_numpy(counts), cfg.negative_sampling, cfg.negative_alpha)
    prior = log_prior(torch.from_numpy(counts)) if cfg.popularity_debias else None

    model = model if model is not None else MODELS[cfg.model][1](cfg.model_config(num_items))
    init_weights(model, cfg.init)
    dist = distributed.current()
    if dist.enabled:
        model.to(dist.device)
        torch.manual_seed(cfg.seed + dist.rank)  # own dropout masks and negatives per rank
    loss_fn = functools.partial(next_item_loss, loss=cfg.loss, sampler=sampler, negatives=cfg.negatives,
                                logq=cfg.logq_correction, debias=cfg.popularity_debias, prior=prior,
                                mask_seen=cfg.masks_seen)
    if hasattr(model, "auxiliary_loss"):  # a model's own extra objective (content_sasrec's content loss)
        main_loss = loss_fn

        def loss_fn(m, inputs, targets, *extra):
            return main_loss(m, inputs, targets, *extra) + m.auxiliary_loss(inputs, targets)
    step = dist.wrap(distributed.TrainStep(model, loss_fn))
    optimizer = make_optimizer(cfg, model)
    average = copy.deepcopy(model) if cfg.ema else None  # with ema: what is validated and kept
    kept = average if average is not None else model
    after_step = functools.partial(ema_update, average, model, cfg.ema) if average is not None else None
    key = select or f"ndcg@{cfg.k}"
    best = {"metric": -math.inf, "epoch": 0, "metrics": {}, "state": None}
    history: list[dict[str, float]] = []
    bad_evals, first_epoch, elapsed = 0, 1, 0.0

    saved = load_checkpoint(checkpoint_dir) if (checkpoint_dir and resume) else None
    if saved is not None:
        if saved["config"] != asdict(cfg) or saved["num_items"] != num_items:
            raise ValueError(f"checkpoint in {checkpoint_dir} was made with another config or data; not resuming")
        model.load_state_dict(saved["model"])
        if average is not None:
            average.load_state_dict(saved["average"])
        optimizer.load_state_dict(saved["optimizer"])
        best = saved["best"]
        history, bad_evals, elapsed = saved["history"], saved["bad_evals"], saved["elapsed"]
        first_epoch = saved["epoch"] + 1
        rng.bit_generator.state = saved["numpy_rng"]
        torch.set_rng_state(saved["torch_rng"])
        random.setstate(tuple_state(saved["python_rng"]))

    start = time.perf_counter() - elapsed
    bar = tqdm(range(first_epoch, cfg.epochs + 1), disable=not (progress and dist.is_main), unit="epoch", dynamic_ncols=True,
               initial=first_epoch - 1, total=cfg.epochs)
    for epoch in bar:
        if bad_evals >= cfg.patience:
            break
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * lr_factor(cfg, epoch)
        loss, events_per_s = _train_epoch(step, optimizer, train_seqs, cfg, rng, dist, after_step)
        row = {"epoch": epoch, "loss": loss, "events_per_s": round(events_per_s)}
        if (epoch % cfg.eval_every == 0 or epoch == cfg.epochs) and dist.is_main:
            row.update(validate(kept, val_histories, val_targets, num_items, cfg))
            if validator is not None:
                row.update(validator(kept.eval()))
            if row[key] > best["metric"]:
                best = {"metric": row[key], "epoch": epoch, "metrics": dict(row), "state": copy.deepcopy(kept.state_dict())}
                bad_evals = 0
            else:
                bad_evals += 1
        bad_evals = dist.from_main(bad_evals)  # every rank stops when rank 0 does
        history.append(row)
        shown = {"loss": f"{row['loss']:.4f}", "events/s": row["events_per_s"]}
        if key in row:
            shown[key] = f"{row[key]:.4f}"
        if best["epoch"]:
            shown["best"] = f"{best['metric']:.4f}@{best['epoch']}"
        bar.set_postfix(shown)
        if checkpoint_dir and dist.is_main:
            save_checkpoint(checkpoint_dir, {
                "config": asdict(cfg), "num_items": num_items, "epoch": epoch,
                "model": model.state_dict(), "average": average.state_dict() if average is not None else None,
                "optimizer": optimizer.state_dict(), "best": best,
                "history": history, "bad_evals": bad_evals, "elapsed": time.perf_counter() - start,
                "numpy_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                "python_rng": random.getstate(),
            })
    bar.close()
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    elif average is not None:
        model.load_state_dict(average.state_dict())
    if cfg.refit_epochs and dist.from_main(best["state"] is not None):
        dist.copy_from_main(model)  # under DDP only rank 0 holds the selected weights
        full = [s for s in sequences if len(s) >= 2]
        last = history[-1]["epoch"] if history else 0
        if average is not None:
            average.load_state_dict(model.state_dict())
        for epoch in range(last + 1, last + cfg.refit_epochs + 1):
            model.train()
            loss, events_per_s = _train_epoch(step, optimizer, full, cfg, rng, dist, after_step)
            history.append({"epoch": epoch, "loss": loss, "events_per_s": round(events_per_s), "refit": True})
        if average is not None:
            model.load_state_dict(average.state_dict())
    model.to("cpu").eval()
    return FitResult(model, best["epoch"], best["metrics"], history, time.perf_counter() - start, first_epoch - 1)


def _train_epoch(step, optimizer, sequences: list[np.ndarray], cfg: TrainConfig, rng: np.random.Generator, dist,
                 after_step=None):
    """One pass over fresh windows of `sequences`; returns (mean loss over ranks, events/s).
    `after_step`: called after every optimiser step (the weights' moving average, cfg.ema)."""
    inputs, targets, origins = training_windows(sequences, cfg.max_len, rng, origins=True)
    total, steps, tick = 0.0, 0, time.perf_counter()
    for batch_inputs, batch_targets, rows in _batches(inputs, targets, cfg, rng):
        if len(batch_inputs) < dist.world_size:
            continue  # a tail batch too small to give every rank a row (never with one process)
        batch = [batch_inputs, batch_targets]
        if cfg.masks_seen:  # the loss also masks what each user saw before the window
            batch.append(torch.from_numpy(older_items(sequences, origins, rows)))
        loss = step(*dist.shard(*batch))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if after_step is not None:
            after_step()
        total, steps = total + loss.item(), steps + 1
    events_per_s = int((targets != 0).sum()) / max(time.perf_counter() - tick, 1e-9)
    return dist.mean(total / max(steps, 1)), events_per_s


def _batches(inputs: np.ndarray, targets: np.ndarray, cfg: TrainConfig, rng: np.random.Generator):
    """Shuffled (inputs, targets, window rows) batches; with `cfg.bucket`, windows of similar
    length together."""
    if cfg.bucket:
        for batch_inputs, batch_targets, rows in bucketed_batches(inputs, targets, cfg.batch_size, rng):
            yield torch.from_numpy(batch_inputs), torch.from_numpy(batch_targets), rows
        return
    order = rng.permutation(len(inputs))
    inputs_t, targets_t = torch.from_numpy(inputs), torch.from_numpy(targets)
    for i in range(0, len(order), cfg.batch_size):
        rows = order[i : i + cfg.batch_size]
        idx = torch.from_numpy(rows)
        yield inputs_t[idx], targets_t[idx], rows


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
