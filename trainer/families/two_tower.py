"""Training of the two-tower retrieval model (trainer/models/two_tower.py).

Examples: every event of every user except the first (it has no history) is a (user
features, the most recent `history_len` items before it) -> item pair. Each user's last event
is held out for validation (users with at least 3 events), as trainer/families/next_item.py does for the
sequential models, so a test file is never seen here.

Loss: in-batch sampled softmax. For a batch of B pairs, the other B - 1 pairs' items are the
negatives of each row: logits (B, B) = <u_i, v_j> / temperature - log q_j, where q_j is item
j's share of the training targets (log-Q correction: in-batch negatives are drawn by
popularity, so without it popular items are over-penalised). Copies of a row's own item
elsewhere in the batch are masked out (they are not negatives). The model is selected and
early-stopped on full-ranking NDCG@k of the held-out events, seen items excluded.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from recsys.artifact import ItemIndex
from recsys.schema import FIRST_TOKEN, FeatureSchema
from trainer import distributed
from trainer.data.encoding import build_item_index, build_schema, encode_histories
from trainer.data.examples import (
    FeatureEncoder,
    _encode_tables,
    _histories,
    field_layout,
    longest_multi,
)
from trainer.data.tables import Tables, tables_or_load
from trainer.loop import FitResult, LoopConfig
from trainer.loop import fit as run_loop
from trainer.metrics import rank_of_targets, ranking_metrics
from trainer.models.two_tower import TwoTower, TwoTowerConfig

__all__ = [
    "RetrievalConfig",
    "RetrievalData",
    "RetrievalFit",
    "RetrievalRun",
    "build_retrieval_data",
    "fit_two_tower",
    "train_two_tower",
]


@dataclass(frozen=True)
class RetrievalConfig(LoopConfig):
    model: str = "two_tower"  # the only retrieval model so far
    history_len: int = 50  # recent items the user tower reads (also the schema's max_history)
    multi_len: int = 16  # at most this many tokens per multi-valued item feature
    # Model hyperparameters; None keeps the model's own default (trainer/models/two_tower.py)
    dim: int | None = None  # output vector width
    field_dim: int | None = None  # feature embedding width inside the towers
    hidden: int | None = None  # tower MLP hidden width
    dropout: float | None = None  # tower dropout
    temperature: float | None = None  # softmax temperature
    logq: bool = True  # log-Q correction of the in-batch logits
    # Loop settings (trainer/loop.py LoopConfig) with the two-tower's defaults
    lr: float = 3e-3  # (peak) learning rate
    batch_size: int = 1024  # pairs per step = in-batch negatives + 1
    epochs: int = 60  # upper bound; early stopping usually ends sooner
    k: int = 10  # cut-off of the validation NDCG

    def model_config(self, data: RetrievalData) -> TwoTowerConfig:
        shared = {f.name for f in fields(TwoTowerConfig)} & {f.name for f in fields(self)}
        given: dict[str, Any] = {n: getattr(self, n) for n in shared if getattr(self, n) is not None}
        layout = field_layout(data.encoder, data.num_items)
        return TwoTowerConfig(fields=layout, **given)

    def check(self) -> None:
        """Raises ValueError naming the first bad setting."""
        self.check_loop()
        choices = {"model": ("two_tower",)}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        for name in ("history_len", "multi_len", "k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if not self.lr > 0 or (self.temperature is not None and not self.temperature > 0):
            raise ValueError("lr and temperature must be > 0")


@dataclass
class RetrievalData:
    """Encoded feature tables plus training and validation pairs; item tables indexed by token."""

    encoder: FeatureEncoder
    num_items: int
    user_ids: list[str]
    user_cat: np.ndarray  # (U, n_user_cat) int64
    user_num: np.ndarray  # (U, n_user_num) float32
    item_cat: np.ndarray  # (N + 2, n_item_cat) int64
    item_num: np.ndarray  # (N + 2, n_item_num) float32
    item_multi: np.ndarray  # (N + 2, n_item_multi, M) int64
    user_row: np.ndarray  # (E,) per pair
    item: np.ndarray  # (E,) target item token
    history: np.ndarray  # (E, L) left-padded tokens before the target
    valid: np.ndarray  # (E,) bool: the user's held-out last event
    seen: list[np.ndarray]  # per user row: every token of the user's events before their held-out one

    def item_inputs(self, tokens: np.ndarray) -> dict[str, torch.Tensor]:
        return {
            "item_id": torch.from_numpy(tokens),
            "item_cat": torch.from_numpy(self.item_cat[tokens]),
            "item_num": torch.from_numpy(self.item_num[tokens]),
            "item_multi": torch.from_numpy(self.item_multi[tokens]),
        }

    def user_inputs(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        users = self.user_row[rows]
        return {
            "user_cat": torch.from_numpy(self.user_cat[users]),
            "user_num": torch.from_numpy(self.user_num[users]),
            "history": torch.from_numpy(self.history[rows]),
        }


def build_retrieval_data(
    tables: Tables, index: ItemIndex, schema: FeatureSchema, encoder: FeatureEncoder
) -> RetrievalData:
    """Pairs from the interactions (time order within each user, as trainer.data.tables loads them)."""
    user_ids, sequences = encode_histories(tables.interactions, index)
    users = np.concatenate([np.full(len(s), r, dtype=np.int64) for r, s in enumerate(sequences)])
    items = np.concatenate(sequences)
    positions = np.concatenate([np.arange(len(s)) for s in sequences])
    lengths = np.concatenate([np.full(len(s), len(s)) for s in sequences])
    history = _histories(users, items, encoder.history_len)
    valid = (positions == lengths - 1) & (lengths >= 3)
    keep = positions >= 1
    seen = [s[:-1] if len(s) >= 3 else s for s in sequences]
    encoded = _encode_tables(tables, index, schema, encoder, user_ids)
    return RetrievalData(
        encoder=encoder,
        num_items=len(index.item_ids),
        user_ids=user_ids,
        **encoded,
        user_row=users[keep],
        item=items[keep],
        history=history[keep],
        valid=valid[keep],
        seen=seen,
    )


RetrievalFit = FitResult  # what fit_two_tower returns


@dataclass
class RetrievalRun:
    config: RetrievalConfig
    tables: Tables
    schema: FeatureSchema
    index: ItemIndex
    data: RetrievalData
    fit: RetrievalFit


def in_batch_loss(model: TwoTower, data: RetrievalData, rows: np.ndarray, log_q: torch.Tensor | None) -> torch.Tensor:
    """Sampled softmax over the batch's own items (see the module docstring); scalar."""
    items = data.item[rows]
    u = model.user_vectors(**data.user_inputs(rows))  # (B, D)
    v = model.item_vectors(**data.item_inputs(items))  # (B, D)
    logits = u @ v.T / model.cfg.temperature  # (B, B)
    tokens = torch.from_numpy(items)
    if log_q is not None:
        logits = logits - log_q[tokens].unsqueeze(0)
    same = tokens.unsqueeze(0) == tokens.unsqueeze(1)  # (B, B)
    same.fill_diagonal_(False)
    logits = logits.masked_fill(same, -1e9)
    return nn.functional.cross_entropy(logits, torch.arange(len(rows)))


@torch.no_grad()
def all_item_vectors(model: TwoTower, data: RetrievalData, batch: int = 4096) -> torch.Tensor:
    """(N, D) item vectors in item-index order (column i = token i + FIRST_TOKEN), eval mode."""
    model.eval()
    tokens = np.arange(FIRST_TOKEN, data.num_items + FIRST_TOKEN, dtype=np.int64)
    return torch.cat(
        [model.item_vectors(**data.item_inputs(tokens[i : i + batch])) for i in range(0, len(tokens), batch)]
    )


@torch.no_grad()
def validate(model: TwoTower, data: RetrievalData, k: int) -> dict[str, float]:
    """Full-ranking metrics of the held-out events, every earlier item of the user excluded."""
    model.eval()
    rows = np.flatnonzero(data.valid)
    items = all_item_vectors(model, data)
    scores = model(**data.user_inputs(rows), item_vectors=items).numpy()  # (V, N)
    excluded = np.zeros(scores.shape, dtype=bool)
    for i, user in enumerate(data.user_row[rows]):
        excluded[i, data.seen[user] - FIRST_TOKEN] = True
    return ranking_metrics(rank_of_targets(scores, data.item[rows] - FIRST_TOKEN, excluded), k)


class TwoTowerFamily:
    """(user features + history) -> item pairs with in-batch negatives (see the module
    docstring); selection by full-ranking NDCG@k of each user's held-out last event."""

    unit = "examples"
    # some of the towers' parameters can get no gradient in a step (DDP stops on the test data
    # without this), so DDP must not wait for every parameter
    partial_steps = True
    higher_is_better = True
    objective = None

    def __init__(self, cfg: RetrievalConfig, data: RetrievalData):
        cfg.check()
        self.cfg, self.data = cfg, data
        self.select = f"ndcg@{cfg.k}"
        self.train = np.flatnonzero(~data.valid)
        counts = np.bincount(data.item[self.train], minlength=data.num_items + FIRST_TOKEN).astype(np.float64)
        self.log_q = (
            torch.from_numpy(np.log(np.maximum(counts, 1.0) / counts.sum()).astype(np.float32)) if cfg.logq else None
        )

    def build_model(self) -> nn.Module:
        return TwoTower(self.cfg.model_config(self.data))

    def batches(self, rng: np.random.Generator, full: bool = False):
        """(example rows,) per batch; a batch needs 2 rows (its own negatives). `full`: every pair."""
        rows = np.arange(len(self.data.item)) if full else self.train
        order = rows[rng.permutation(len(rows))]
        for i in range(0, len(order) - 1, self.cfg.batch_size):
            picked = order[i : i + self.cfg.batch_size]
            if len(picked) >= 2:
                yield (torch.from_numpy(picked),)

    def count(self, batch) -> int:
        return len(batch[0])

    def loss(self, model: nn.Module, rows: torch.Tensor) -> torch.Tensor:
        return in_batch_loss(model, self.data, rows.cpu().numpy(), self.log_q)

    def validate(self, model: nn.Module) -> dict[str, float]:
        return validate(model, self.data, self.cfg.k)

    def fingerprint(self) -> dict:
        return {"pairs": len(self.data.item), "train": len(self.train), "num_items": self.data.num_items}


def fit_two_tower(
    cfg: RetrievalConfig,
    data: RetrievalData,
    *,
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
) -> FitResult:
    """Trains the two-tower model through the loop (trainer/loop.py); see TwoTowerFamily.
    Under DDP each rank's in-batch negatives are its own rows of the batch."""
    result = run_loop(cfg, TwoTowerFamily(cfg, data), progress=progress, checkpoint_dir=checkpoint_dir, resume=resume)
    result.best_metrics = {f"valid_{k}": v for k, v in result.best_metrics.items() if "@" in k}
    return result


def train_two_tower(
    cfg: RetrievalConfig,
    interactions: str | Path | None = None,
    *,
    users: str | Path | None = None,
    items: str | Path | None = None,
    tables: Tables | None = None,
    progress: bool = True,
    log=print,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
) -> RetrievalRun | None:
    """Loads (or takes) the tables, builds pairs with the same schema as a sequential model of
    the same history length (one feature service serves both), and fits."""
    cfg.check()
    tables = tables_or_load(tables, interactions, users, items, log)
    index = build_item_index(tables.interactions, tables.items)
    schema = build_schema(tables, index, cfg.history_len)
    encoder = FeatureEncoder.from_schema(schema, longest_multi(tables, schema, cfg.multi_len), cfg.history_len)
    data = build_retrieval_data(tables, index, schema, encoder)
    log(
        f"{len(data.item):,} pairs: {int((~data.valid).sum()):,} train, {int(data.valid.sum()):,} validation; "
        f"inputs {encoder.describe()}"
    )
    result = fit_two_tower(cfg, data, progress=progress, checkpoint_dir=checkpoint_dir, resume=resume)
    if not distributed.current().is_main:
        return None  # under DDP only rank 0 holds the selected model
    if result.resumed_from:
        log(f"resumed from epoch {result.resumed_from} ({checkpoint_dir})")
    log(result.summary())
    return RetrievalRun(cfg, tables, schema, index, data, result)
