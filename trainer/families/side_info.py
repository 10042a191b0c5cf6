"""Training of the sequential models with side information (trainer/models/side_info.py):
`item_features` (each item's id fused with its features from the item table) and
`user_features` (the user's features from the user table added to every position's hidden
state), for SASRec, GRU4Rec and Caser.

Inputs are encoded exactly as the served artifact encodes them:
- user rows go through recsys.encoding.FeatureEncoder (the two-tower's encoder), one row per
  sequence; a user without a row in the user table gets PAD tokens and mean (0) values;
- item rows go through trainer/families/content.py ContentSpec (categorical, multi-valued,
  numeric-bucket and title-word tokens); an item without a row gets no content, only its id.

`SideInfoFamily` is the next-item family (same windows, loss, validation split) whose batches
also carry each window's sequence number, turned into the window's user inputs in `loss` and
in validation. The loop is trainer/loop.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from recsys.artifact import ItemIndex
from recsys.encoding import FeatureEncoder
from recsys.schema import FIRST_TOKEN, PAD, FeatureSchema
from trainer import distributed
from trainer.data.batches import last_window, older_items, training_windows
from trainer.data.encoding import build_item_index, build_schema, encode_histories
from trainer.data.tables import Tables, feature_rows, tables_or_load
from trainer.families.content import ContentSpec, ItemContent, fit_content
from trainer.families.next_item import NextItemFamily, TrainConfig, build_model
from trainer.loop import FitResult
from trainer.loop import fit as run_loop
from trainer.metrics import rank_of_targets, ranking_metrics
from trainer.models.content import ContentSASRecConfig
from trainer.models.side_info import SideInfoConfig, SideInfoModel

__all__ = [
    "BACKBONES",
    "SideInfoData",
    "SideInfoFamily",
    "SideInfoRun",
    "build_side_info_model",
    "fit_side_info",
    "prepare_side_info",
    "score_with_users",
    "train_side_info",
]

BACKBONES = ("sasrec", "gru4rec", "caser")


@dataclass
class SideInfoData:
    """What a side-information model reads besides the item sequence.

    user_cat (S, C) int64 and user_num (S, F) float32: one row per sequence (the order of the
    sequences trained on), empty (S, 0) without user features. `encoder` records the user
    feature order for the artifact; `spec` and `content` the item features (None without).
    """

    user_features: bool
    item_features: bool
    encoder: FeatureEncoder
    user_cat: torch.Tensor
    user_num: torch.Tensor
    spec: ContentSpec | None = None
    content: ItemContent | None = None

    def inputs(self, rows: torch.Tensor) -> dict[str, torch.Tensor | None]:
        """Sequence numbers (B,) -> {"user_cat": (B, C), "user_num": (B, F)} on rows' device, or
        Nones without user features."""
        if not self.user_features:
            return {"user_cat": None, "user_num": None}
        idx = rows.long().cpu()
        return {"user_cat": self.user_cat[idx].to(rows.device), "user_num": self.user_num[idx].to(rows.device)}


def prepare_side_info(
    cfg: TrainConfig,
    tables: Tables,
    index: ItemIndex,
    schema: FeatureSchema,
    user_ids: list[str],
    sequences: list[np.ndarray],
    *,
    user_features: bool,
    item_features: bool,
) -> SideInfoData:
    """Encodes the user rows of `user_ids` (one per sequence) and the items of `index`.

    Raises ValueError when an option is on but its table is missing or holds no feature the
    model can read, when `cfg.model` is not one of BACKBONES, or with `ann = "on"` or `int8`
    (the export writes neither)."""
    if cfg.model not in BACKBONES:
        raise ValueError(f"user_features and item_features apply to {', '.join(BACKBONES)}; got model {cfg.model!r}")
    if cfg.ann == "on" or cfg.int8:
        raise ValueError("ann = on and int8 are not available with user_features or item_features")
    encoder = FeatureEncoder.from_schema(schema, 1, cfg.max_len)
    n_cat, n_num = (len(encoder.user_cat), len(encoder.user_num)) if user_features else (0, 0)
    if user_features:
        if tables.users is None:
            raise ValueError("user_features needs a user table (--users)")
        if not n_cat and not n_num:
            raise ValueError("user_features: the user table has no categorical or numeric feature to read")
    cats = np.zeros((len(user_ids), n_cat), dtype=np.int64)
    nums = np.zeros((len(user_ids), n_num), dtype=np.float32)
    if user_features:
        rows = {r["user_id"]: r["features"] for r in feature_rows(tables.users, schema.user_features, "user_id")}
        for i, user in enumerate(user_ids):
            cat, num = encoder.encode_user(rows.get(user, {}))  # no row: PAD tokens, mean values
            cats[i], nums[i] = cat, num
    spec = content = None
    if item_features:
        if tables.items is None:
            raise ValueError("item_features needs an item table (--items)")
        spec, item_rows, _ = fit_content(
            tables.items, min_word_items=cfg.min_word_items, numeric_buckets=cfg.numeric_buckets
        )
        n = len(index.item_ids)
        trained = [s[:-1] for s in sequences if len(s) >= 2]
        counts = np.bincount(np.concatenate(trained) - FIRST_TOKEN, minlength=n) if trained else np.zeros(n)
        content = spec.encode(index.item_ids, item_rows, None, counts > 0)
        if not (content.attrs != PAD).any() and not (content.words != PAD).any():
            raise ValueError("item_features: no item of the item table has a feature the model can read")
    return SideInfoData(
        user_features, item_features, encoder, torch.from_numpy(cats), torch.from_numpy(nums), spec, content
    )


def build_side_info_model(cfg: TrainConfig, num_items: int, data: SideInfoData) -> SideInfoModel:
    """An untrained `cfg.model` backbone wrapped with the side information of `data`."""
    backbone = build_model(cfg, num_items)
    hidden = backbone.cfg.hidden
    items = None
    if data.item_features:
        items = ContentSASRecConfig(
            num_items=num_items,
            hidden=hidden,
            # Side information here serves items with interactions: ids are kept unless asked
            id_dropout=cfg.id_dropout if cfg.id_dropout is not None else 0.0,
            **data.spec.model_fields(),
        )
    enc = data.encoder
    model = SideInfoModel(
        backbone,
        SideInfoConfig(
            hidden=hidden,
            num_items=num_items,
            user_cat=tuple(len(s.vocabulary) + FIRST_TOKEN for s in enc.user_cat) if data.user_features else (),
            n_user_num=len(enc.user_num) if data.user_features else 0,
            items=items,
        ),
    )
    if data.item_features:
        model.set_content(*data.content.tensors())
    return model


@torch.no_grad()
def score_with_users(
    model: nn.Module, histories: list[np.ndarray], rows: np.ndarray, data: SideInfoData, max_len: int
) -> np.ndarray:
    """Scores (U, N) after each history, with the user inputs of sequence numbers `rows` (U,)."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(histories), 512):
        x = torch.from_numpy(np.stack([last_window(h, max_len) for h in histories[i : i + 512]])).to(device)
        user = data.inputs(torch.from_numpy(np.asarray(rows[i : i + 512], dtype=np.int64)).to(device))  # (B, ...)
        out.append(model(x, **user).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


class SideInfoFamily(NextItemFamily):
    """NextItemFamily whose batches are (inputs, targets, sequence numbers[, older items]) and
    whose model reads each window's user inputs. Selection as the next-item family's."""

    def __init__(
        self,
        cfg: TrainConfig,
        sequences: list[np.ndarray],
        num_items: int,
        data: SideInfoData,
        *,
        model: SideInfoModel | None = None,
        validator=None,
        select: str | None = None,
    ):
        if cfg.bucket:
            raise ValueError("bucket does not apply with user_features or item_features")
        self.data = data
        model = model if model is not None else build_side_info_model(cfg, num_items, data)
        super().__init__(cfg, sequences, num_items, model=model, validator=validator, select=select)
        # The validation users' sequence numbers, drawn as NextItemFamily draws their histories.
        val = [i for i, s in enumerate(sequences) if len(s) >= 3]
        if cfg.valid_users and len(val) > cfg.valid_users:
            keep = np.sort(np.random.default_rng(cfg.seed).choice(len(val), cfg.valid_users, replace=False))
            val = [val[i] for i in keep]
        self.val_rows = np.array(val, dtype=np.int64)
        self.settings.update(user_features=data.user_features, item_features=data.item_features)

    def _sparse_items(self) -> bool:
        # Fused item tables are computed as a whole each step: their gradients are dense.
        if self.data.item_features:
            if self.cfg.sparse_items:
                raise ValueError("sparse_items does not apply with item_features (fused tables train densely)")
            return False
        return bool(self.cfg.sparse_items)

    def batches(self, rng: np.random.Generator, full: bool = False):
        numbers = np.array([i for i, s in enumerate(self.sequences) if len(s) >= 2], dtype=np.int64)
        sequences = [self.sequences[i] if full else self.sequences[i][:-1] for i in numbers]
        dtype = np.int32 if self.num_items + FIRST_TOKEN < 2**31 else np.int64
        inputs, targets, origins = training_windows(sequences, self.cfg.max_len, rng, origins=True, dtype=dtype)
        owner = torch.from_numpy(numbers[origins[:, 0]])  # each window's sequence number
        inputs_t, targets_t = torch.from_numpy(inputs), torch.from_numpy(targets)
        order = rng.permutation(len(inputs))
        self.epoch_steps = -(-len(inputs) // self.cfg.batch_size)
        for i in range(0, len(order), self.cfg.batch_size):
            rows = order[i : i + self.cfg.batch_size]
            idx = torch.from_numpy(rows)
            batch = (inputs_t[idx].long(), targets_t[idx].long(), owner[idx])
            if self.cfg.masks_seen:  # the loss also masks what each user saw before the window
                batch += (torch.from_numpy(older_items(sequences, origins, rows)),)
            yield batch

    def loss(
        self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor, *extra: torch.Tensor
    ) -> torch.Tensor:
        return super().loss(model.with_users(**self.data.inputs(rows)), inputs, targets, *extra)

    def validate(self, model: nn.Module) -> dict[str, float]:
        cfg, n = self.cfg, self.num_items
        chunk = max(1, min(1024, 2**24 // max(n, 1)))
        ranks = []
        for a in range(0, len(self.val_histories), chunk):
            part = self.val_histories[a : a + chunk]
            scores = score_with_users(model, part, self.val_rows[a : a + chunk], self.data, cfg.max_len)
            excluded = np.zeros((len(part), n), dtype=bool)
            for row, h in enumerate(part):
                excluded[row, h - FIRST_TOKEN] = True
            ranks.append(rank_of_targets(scores, self.val_targets[a : a + chunk] - FIRST_TOKEN, excluded))
        row = ranking_metrics(np.concatenate(ranks) if ranks else np.zeros(0), cfg.k)
        if self.validator is not None:
            row.update(self.validator(model.eval()))
        return row


def fit_side_info(
    cfg: TrainConfig,
    sequences: list[np.ndarray],
    num_items: int,
    data: SideInfoData,
    *,
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    validator=None,
    select: str | None = None,
) -> FitResult:
    """Trains `cfg.model` with the side information of `data` through the loop (trainer/loop.py)."""
    family = SideInfoFamily(cfg, sequences, num_items, data, validator=validator, select=select)
    return run_loop(family.cfg, family, progress=progress, checkpoint_dir=checkpoint_dir, resume=resume)


@dataclass
class SideInfoRun:
    """A trained side-information model and what its export needs."""

    config: TrainConfig
    tables: Tables
    schema: FeatureSchema
    index: ItemIndex
    user_ids: list[str]  # one per sequence
    sequences: list[np.ndarray]
    data: SideInfoData
    fit: FitResult


def train_side_info(
    cfg: TrainConfig,
    interactions: str | Path | None = None,
    *,
    user_features: bool,
    item_features: bool,
    users: str | Path | None = None,
    items: str | Path | None = None,
    tables: Tables | None = None,
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    log=print,
    validator=None,
    select: str | None = None,
) -> SideInfoRun | None:
    """Tables (loaded from the paths, or `tables` as trainer/pipeline.py prepare_tables gives
    them: cleaned, pseudonymised, forgotten users left out) -> sequences + side information -> fit. `validator` and `select` as for
    trainer/families/next_item.py fit. Under DDP only rank 0 returns the run."""
    tables = tables_or_load(tables, interactions, users, items, log=log)
    index = build_item_index(tables.interactions, tables.items)
    user_ids, sequences = encode_histories(tables.interactions, index)
    schema = build_schema(tables, index, cfg.max_len)
    data = prepare_side_info(
        cfg, tables, index, schema, user_ids, sequences, user_features=user_features, item_features=item_features
    )
    result = fit_side_info(
        cfg,
        sequences,
        len(index.item_ids),
        data,
        progress=progress,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        validator=validator,
        select=select,
    )
    if not distributed.current().is_main:
        return None
    log(
        f"best epoch {result.best_epoch} of {len(result.history)} in {result.seconds:.0f} s: "
        + ", ".join(f"{k} {v:.4f}" for k, v in result.best_metrics.items() if "@" in k)
    )
    return SideInfoRun(cfg, tables, schema, index, user_ids, sequences, data, result)
