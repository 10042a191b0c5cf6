"""Training: sequences -> SASRec -> best-on-validation model.

The loop is one readable function (`fit`): windows -> loss -> Adam step -> validation every
`eval_every` epochs -> keep the best state by NDCG@k -> stop after `patience` evaluations
without improvement. Validation uses only the training file: each user's last event is held
out; the test file is never seen here.
"""

from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
from torch import nn

from recsys.schema import FIRST_TOKEN
from trainer.batches import last_window, training_windows
from trainer.losses import next_item_cross_entropy
from trainer.metrics import rank_of_targets, ranking_metrics
from trainer.models import MODELS

__all__ = ["FitResult", "TrainConfig", "fit", "score_histories", "set_seed"]


@dataclass(frozen=True)
class TrainConfig:
    model: str = "sasrec"  # key of trainer.models.MODELS
    epochs: int = 200  # upper bound; early stopping usually ends sooner
    batch_size: int = 256  # windows per step
    lr: float = 3e-3  # Adam learning rate
    weight_decay: float = 0.0  # Adam L2 penalty
    max_len: int = 50  # most recent items the model reads
    # Model hyperparameters; None keeps the model's own default (see trainer/models/<model>.py).
    hidden: int | None = None  # embedding width
    heads: int | None = None  # attention heads (sasrec)
    layers: int | None = None  # Transformer blocks (sasrec) or GRU layers (gru4rec)
    inner: int | None = None  # feed-forward width (sasrec)
    dropout: float | None = None  # dropout rate
    init: str = "xavier_uniform"  # xavier_uniform | xavier_normal | normal
    seed: int = 0  # seeds python, numpy and torch
    eval_every: int = 3  # epochs between validations
    patience: int = 4  # validations without improvement before stopping
    k: int = 10  # cut-off of the validation metric (NDCG@k selects the model)
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default

    def model_config(self, num_items: int):
        """The model's own config: the fields it shares with this one, its defaults for the rest."""
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; known: {', '.join(MODELS)}")
        config_cls = MODELS[self.model][0]
        shared = {f.name for f in fields(config_cls)} & {f.name for f in fields(self)}
        given = {name: getattr(self, name) for name in shared if getattr(self, name) is not None}
        return config_cls(num_items=num_items, **given)


@dataclass
class FitResult:
    model: nn.Module
    best_epoch: int
    best_metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


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
            elif scheme == "normal":
                nn.init.normal_(module.weight, std=0.02)
            else:
                raise ValueError(f"unknown init {scheme!r}: use xavier_uniform, xavier_normal or normal")
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()


@torch.no_grad()
def score_histories(model: nn.Module, histories: list[np.ndarray], max_len: int, batch: int = 512) -> np.ndarray:
    """Scores (U, N) of every item after each token history, in eval mode."""
    model.eval()
    out = []
    for i in range(0, len(histories), batch):
        x = np.stack([last_window(h, max_len) for h in histories[i : i + batch]])
        out.append(model(torch.from_numpy(x)).numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def validate(model: nn.Module, histories: list[np.ndarray], targets: np.ndarray, num_items: int, cfg: TrainConfig) -> dict:
    """Full-ranking metrics of `targets` (tokens) after `histories`, seen items excluded."""
    scores = score_histories(model, histories, cfg.max_len)
    excluded = np.zeros((len(histories), num_items), dtype=bool)
    for row, h in enumerate(histories):
        excluded[row, h - FIRST_TOKEN] = True
    ranks = rank_of_targets(scores, targets - FIRST_TOKEN, excluded)
    return ranking_metrics(ranks, cfg.k)


def fit(cfg: TrainConfig, sequences: list[np.ndarray], num_items: int, *, progress: bool = True) -> FitResult:
    """Trains on every user's sequence minus its last event; selects on that last event.

    sequences: per user, int64 tokens oldest first. Users with fewer than 3 events train but
    are not validated (their one remaining event has nothing to predict it from).
    """
    from tqdm.auto import tqdm

    set_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    train_seqs = [s[:-1] for s in sequences if len(s) >= 2]
    val = [(s[:-1], s[-1]) for s in sequences if len(s) >= 3]
    val_histories = [h for h, _ in val]
    val_targets = np.array([t for _, t in val], dtype=np.int64)

    model = MODELS[cfg.model][1](cfg.model_config(num_items))
    init_weights(model, cfg.init)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    best = {"metric": -math.inf, "epoch": 0, "metrics": {}, "state": None}
    key = f"ndcg@{cfg.k}"
    history: list[dict[str, float]] = []
    bad_evals = 0
    start = time.perf_counter()
    bar = tqdm(range(1, cfg.epochs + 1), disable=not progress, unit="epoch", dynamic_ncols=True)
    for epoch in bar:
        model.train()
        inputs, targets = training_windows(train_seqs, cfg.max_len, rng)
        order = torch.from_numpy(rng.permutation(len(inputs)))
        inputs_t, targets_t = torch.from_numpy(inputs), torch.from_numpy(targets)
        total, steps = 0.0, 0
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            loss = next_item_cross_entropy(model, inputs_t[idx], targets_t[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, steps = total + loss.item(), steps + 1
        row = {"epoch": epoch, "loss": total / max(steps, 1)}
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            row.update(validate(model, val_histories, val_targets, num_items, cfg))
            if row[key] > best["metric"]:
                best = {"metric": row[key], "epoch": epoch, "metrics": dict(row), "state": copy.deepcopy(model.state_dict())}
                bad_evals = 0
            else:
                bad_evals += 1
        history.append(row)
        bar.set_postfix(loss=f"{row['loss']:.4f}", **{key: f"{row.get(key, float('nan')):.4f}", "best": f"{best['metric']:.4f}"})
        if bad_evals >= cfg.patience:
            break
    bar.close()
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    return FitResult(model, best["epoch"], best["metrics"], history, time.perf_counter() - start)


def config_dict(cfg: TrainConfig) -> dict:
    return asdict(cfg)
