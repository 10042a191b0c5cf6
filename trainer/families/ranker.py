"""Training and evaluation of the feature-based models: DeepFM, DCN-v2, Conv1D CTR, rating.

The flow (`train_ranker`): tables -> schema + item index (the same as the sequential
pipeline's, so both artifacts share one schema hash) -> labelled examples split 8:1:1 by seed
(trainer/data/examples.py) -> `fit`: batches -> loss -> step -> validation every `eval_every`
epochs -> keep the best state by validation AUC (rankers) or RMSE (rating) -> stop after
`patience` validations without improvement -> the test split is scored once, at the end.
Rankers learn with binary cross-entropy (optionally class-weighted), the rating model with MSE.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from recsys.artifact import ItemIndex
from recsys.schema import FeatureSchema
from trainer import distributed
from trainer.data.encoding import build_item_index, build_schema
from trainer.data.examples import (
    LABELS,
    TEST,
    TRAIN,
    VALID,
    FeatureEncoder,
    RankingData,
    build_ranking_data,
    field_layout,
    longest_multi,
)
from trainer.data.tables import Tables, tables_or_load
from trainer.loop import FitResult, LoopConfig, init_weights
from trainer.loop import fit as run_loop
from trainer.models.conv_ctr import ConvCTR, ConvCTRConfig
from trainer.models.custom import is_custom, load_model_class
from trainer.models.dcn import DCNv2, DCNv2Config
from trainer.models.deepfm import DeepFM, DeepFMConfig
from trainer.models.fields import FieldLayout
from trainer.models.rating import RatingModel, RatingModelConfig
from trainer.pointwise_metrics import classification_metrics, rating_metrics

__all__ = [
    "RANKERS",
    "RankConfig",
    "RankFit",
    "RankRun",
    "batch_inputs",
    "fit_ranker",
    "predict",
    "reads_user_id",
    "train_ranker",
]

# name -> (config class, module class); every forward takes the inputs of fields.py -> (B,)
RANKERS: dict[str, tuple[type, type[nn.Module]]] = {
    "deepfm": (DeepFMConfig, DeepFM),
    "dcn": (DCNv2Config, DCNv2),
    "conv_ctr": (ConvCTRConfig, ConvCTR),
    "rating": (RatingModelConfig, RatingModel),
}
INPUTS = ("user_cat", "user_num", "item_id", "item_cat", "item_num", "item_multi", "history", "user_id")


@dataclass(frozen=True)
class RankConfig(LoopConfig):
    model: str = "deepfm"  # deepfm | dcn | conv_ctr | rating (see RANKERS), or your own: file.py:Class
    model_options: dict = field(default_factory=dict)  # your own ranker's keyword arguments (trainer/models/custom.py)
    # Labels (trainer/data/examples.py); model=rating always learns the rating itself.
    label: str = "threshold"  # threshold (rating >= threshold) | implicit (sampled negatives)
    threshold: float = 4.0  # label = rating >= threshold
    negatives: int = 1  # sampled 0-labelled items per event (label=implicit)
    negative_sampling: str = "uniform"  # uniform | popularity (training counts ** 0.75)
    valid_share: float = 0.1  # of events, drawn at random by seed
    test_share: float = 0.1  # of events; scored once, after training
    history_len: int = 50  # recent items read as one field; 0 = no history input
    history_count: bool = True  # with history: log(1 + its length) as one more field
    history_attention: bool = False  # with history: also pool it by attention to the candidate
    user_id: bool = False  # read the user id as a field (users unseen in training share one OOV vector)
    multi_len: int = 16  # at most this many tokens per multi-valued feature
    # Model hyperparameters; None keeps the model's own default (trainer/models/<model>.py).
    dim: int | None = None  # field embedding width
    mlp: str | None = None  # hidden widths, comma-separated, e.g. "256,128"
    dropout: float | None = None  # dropout rate
    cross_layers: int | None = None  # dcn: cross layers
    filters: int | None = None  # conv_ctr: conv channels
    # Objective and optimisation
    class_weight: str = "none"  # none | balanced (BCE positives weighted n_neg / n_pos)
    ordinal: bool = False  # label=threshold: learn P(rating >= t) for every rating level t with one
    #   score plus an offset per level (cumulative logits), so the whole rating trains the model;
    #   the served output is still P(rating >= threshold)
    # Loop settings (trainer/loop.py LoopConfig) with the rankers' defaults. `init` other than
    # xavier_uniform re-initialises linear and embedding weights; conv kernels and numeric-feature
    # vectors stay Xavier-uniform. `seed` also draws the split and the negatives.
    batch_size: int = 1024  # examples per step
    epochs: int = 30  # upper bound; early stopping usually ends sooner
    patience: int = 3  # validations without improvement before stopping

    @property
    def task(self) -> str:
        """ "rating" for the rating model, else "rank"."""
        return "rating" if self.model == "rating" else "rank"

    @property
    def label_mode(self) -> str:
        return "rating" if self.model == "rating" else self.label

    def model_config(self, layout: FieldLayout, rating_range: tuple[float, float] = (1.0, 5.0)) -> Any:
        """The model's own config: the fields it shares with this one, its defaults for the rest."""
        if is_custom(self.model):
            return layout  # your own ranker is built from the layout and model_options
        if self.model not in RANKERS:
            raise ValueError(f"unknown model {self.model!r}; known: {', '.join(RANKERS)}")
        config_cls = RANKERS[self.model][0]
        shared = {f.name for f in fields(config_cls)} & {f.name for f in fields(self)}
        given: dict[str, Any] = {n: getattr(self, n) for n in shared if getattr(self, n) is not None}
        if "mlp" in given:
            given["mlp"] = tuple(int(w) for w in str(given["mlp"]).split(",") if w.strip())
        if self.model == "rating":
            given["low"], given["high"] = rating_range
        return config_cls(fields=layout, **given)

    def check(self) -> None:
        """Raises ValueError naming the first bad setting."""
        self.check_loop()
        if is_custom(self.model):
            if getattr(load_model_class(self.model), "task", "next_item") != "rank":
                raise ValueError(f'model {self.model!r} is not a rank model (set task = "rank" on the class)')
        elif self.model_options:
            raise ValueError('model_options are for your own model (model = "file.py:Class")')
        choices = {
            "model": (*RANKERS, self.model) if is_custom(self.model) else tuple(RANKERS),
            "label": LABELS[:2],
            "negative_sampling": ("uniform", "popularity"),
            "class_weight": ("none", "balanced"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        for name in ("multi_len",):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if self.history_len < 0 or self.negatives < 0 or self.warmup_epochs < 0:
            raise ValueError("history_len, negatives and warmup_epochs must be >= 0")
        if self.label == "implicit" and self.model != "rating" and self.negatives < 1:
            raise ValueError("label=implicit needs negatives >= 1")
        if self.ordinal and (self.label != "threshold" or self.model == "rating" or self.class_weight != "none"):
            raise ValueError("ordinal needs label=threshold, a ranker (not rating) and class_weight=none")
        if not (
            self.lr > 0 and self.valid_share > 0 and self.test_share > 0 and self.valid_share + self.test_share < 1
        ):
            raise ValueError("lr must be > 0 and valid_share, test_share > 0 with a sum below 1")


RankFit = FitResult  # what fit_ranker returns


@dataclass
class RankRun:
    """Everything `train_ranker` produced; the export reads it."""

    config: RankConfig
    tables: Tables
    schema: FeatureSchema
    index: ItemIndex
    data: RankingData
    fit: RankFit
    test_metrics: dict[str, float]


def batch_inputs(data: RankingData, rows: np.ndarray, with_user_id: bool = False) -> dict[str, torch.Tensor]:
    """Model inputs for example `rows` (see trainer/models/fields.py); absent inputs left out,
    and user_id unless `with_user_id`."""
    users, items = data.user_row[rows], data.item[rows]
    out = {
        "user_cat": data.user_cat[users],
        "user_num": data.user_num[users],
        "item_id": items,
        "item_cat": data.item_cat[items],
        "item_num": data.item_num[items],
        "item_multi": data.item_multi[items],
        "history": data.history[rows],
        "user_id": data.user_token[users],
    }
    present = {
        "user_cat": out["user_cat"].shape[1],
        "user_num": out["user_num"].shape[1],
        "item_id": 1,
        "item_cat": out["item_cat"].shape[1],
        "item_num": out["item_num"].shape[1],
        "item_multi": out["item_multi"].shape[1],
        "history": out["history"].shape[1],
        "user_id": int(with_user_id),
    }
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items() if present[k]}


@torch.no_grad()
def predict(model: nn.Module, data: RankingData, rows: np.ndarray, batch: int = 8192) -> np.ndarray:
    """Scores (len(rows),) float32 in eval mode: probabilities, or ratings for the rating model."""
    model.eval()
    with_user_id = reads_user_id(model)
    parts = [
        model(**_full(batch_inputs(data, rows[i : i + batch], with_user_id))).numpy()
        for i in range(0, len(rows), batch)
    ]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def _full(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | None]:
    return {name: inputs.get(name) for name in INPUTS}


def evaluate(model: nn.Module, data: RankingData, rows: np.ndarray, task: str) -> dict[str, float]:
    scores, labels = predict(model, data, rows), data.label[rows]
    return rating_metrics(labels, scores) if task == "rating" else classification_metrics(labels, scores)


class OrdinalBCE(nn.Module):
    """Cumulative-logit (proportional-odds) BCE: for every rating level t above the lowest,
    BCE(logit + offset_t, rating >= t), averaged. The offset of the label threshold is pinned
    at 0, so sigmoid(logit) stays P(rating >= threshold); the others start at the training
    log-odds differences. logits (B,), ratings (B,) -> scalar."""

    def __init__(self, train_ratings: np.ndarray, threshold: float):
        super().__init__()
        levels = sorted(set(np.unique(train_ratings)[1:].tolist()) | {float(threshold)})
        self.register_buffer("levels", torch.tensor(levels, dtype=torch.float32))
        self.anchor = levels.index(float(threshold))
        share = np.array([np.clip((train_ratings >= t).mean(), 1e-3, 1 - 1e-3) for t in levels])
        log_odds = np.log(share / (1 - share))
        self.offsets = nn.Parameter(torch.tensor(log_odds - log_odds[self.anchor], dtype=torch.float32))

    def forward(self, logits: torch.Tensor, ratings: torch.Tensor) -> torch.Tensor:
        offsets = self.offsets - self.offsets[self.anchor]  # (T,), 0 at the threshold
        z = logits.unsqueeze(1) + offsets  # (B, T)
        y = (ratings.unsqueeze(1) >= self.levels).to(z.dtype)
        return nn.functional.binary_cross_entropy_with_logits(z, y)


def reads_user_id(model: nn.Module) -> bool:
    """Whether a ranker built by fit_ranker takes the user_id input."""
    layout = model.fields if hasattr(model, "fields") else model.cfg.fields
    return layout.user_ids > 0


class RankerFamily:
    """Labelled (user, item) examples of the train split; selection by validation AUC (rankers)
    or RMSE (rating). The test split is never read here. Rankers learn with binary
    cross-entropy (optionally class-weighted, or ordinal), the rating model with MSE."""

    unit = "examples"
    # some field-embedding parameters can get no gradient in a step (DeepFM on the test data: two
    # of them), so DDP must not wait for every parameter
    partial_steps = True

    def __init__(self, cfg: RankConfig, data: RankingData):
        cfg.check()
        self.cfg, self.data = cfg, data
        self.train, self.valid = data.rows(TRAIN), data.rows(VALID)
        labels = data.label[self.train]
        low, high = (float(labels.min()), float(labels.max())) if cfg.task == "rating" else (1.0, 5.0)
        self.rating_range = (low, high) if high > low else (low, low + 1.0)
        self.select, self.higher_is_better = ("valid_rmse", False) if cfg.task == "rating" else ("valid_auc", True)
        if cfg.task == "rating":
            self.objective: nn.Module = nn.MSELoss()
        elif cfg.ordinal:
            if data.rating is None:
                raise ValueError("ordinal needs the ratings (label=threshold)")
            self.objective = OrdinalBCE(data.rating[self.train], cfg.threshold)
        else:
            pos = float(labels.sum())
            weight = (len(labels) - pos) / max(pos, 1.0) if cfg.class_weight == "balanced" else 1.0
            self.objective = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(weight))
        self.targets = data.rating if cfg.ordinal else data.label
        layout = replace(
            field_layout(data.encoder, data.num_items),
            history_count=cfg.history_count,
            history_attention=cfg.history_attention,
            user_ids=data.user_vocab if cfg.user_id else 0,
        )
        self.layout = layout
        self.model_cfg = cfg.model_config(layout, self.rating_range)
        self.names: tuple[str, ...] = ()

    def build_model(self) -> nn.Module:
        if is_custom(self.cfg.model):
            model = load_model_class(self.cfg.model)(fields=self.model_cfg, **self.cfg.model_options)
        else:
            model = RANKERS[self.cfg.model][1](self.model_cfg)
        if self.cfg.init != "xavier_uniform":  # the models' own init is Xavier-uniform (fields.init_xavier)
            init_weights(model, self.cfg.init)
        return model

    def batches(self, rng: np.random.Generator, full: bool = False):
        """(target, *model inputs) per batch, inputs in `self.names` order; `full`: validation rows too."""
        rows = np.concatenate([self.train, self.valid]) if full else self.train
        order = rows[rng.permutation(len(rows))]
        with_user_id = self.layout.user_ids > 0
        for i in range(0, len(order), self.cfg.batch_size):
            picked = order[i : i + self.cfg.batch_size]
            inputs = batch_inputs(self.data, picked, with_user_id)
            self.names = tuple(inputs)
            yield (torch.from_numpy(self.targets[picked]), *inputs.values())

    def count(self, batch) -> int:
        return len(batch[0])

    def loss(self, model: nn.Module, target: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        given = _full(dict(zip(self.names, inputs, strict=True)))
        out = model(**given) if self.cfg.task == "rating" else model.logits(**given)
        return self.objective(out, target)

    def validate(self, model: nn.Module) -> dict[str, float]:
        return {f"valid_{k}": v for k, v in evaluate(model, self.data, self.valid, self.cfg.task).items()}

    def fingerprint(self) -> dict:
        data = self.data
        return {
            "examples": len(data.label),
            "train": len(self.train),
            "num_items": int(data.num_items),
            "label_sum": float(data.label.sum()),
            "user_vocab": data.user_vocab,
        }


def fit_ranker(
    cfg: RankConfig,
    data: RankingData,
    *,
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
) -> FitResult:
    """Trains a ranker or the rating model through the loop (trainer/loop.py); see RankerFamily.
    The batch order is seeded apart from the split (which used cfg.seed)."""
    result = run_loop(
        cfg, RankerFamily(cfg, data), progress=progress, checkpoint_dir=checkpoint_dir, resume=resume, rng_offset=1
    )
    result.best_metrics = {k: v for k, v in result.best_metrics.items() if k.startswith("valid_")}
    return result


def train_ranker(
    cfg: RankConfig,
    interactions: str | Path | None = None,
    *,
    users: str | Path | None = None,
    items: str | Path | None = None,
    tables: Tables | None = None,
    progress: bool = True,
    log=print,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
) -> RankRun | None:
    """Loads (or takes) the tables, builds examples, fits (checkpointing every epoch into
    `checkpoint_dir` when given; `resume` continues from there), and scores the test split once."""
    cfg.check()
    tables = tables_or_load(tables, interactions, users, items, log)
    index = build_item_index(tables.interactions, tables.items)
    schema = build_schema(tables, index, cfg.history_len or 50)  # 50: the sequential default
    encoder = FeatureEncoder.from_schema(schema, longest_multi(tables, schema, cfg.multi_len), cfg.history_len)
    data = build_ranking_data(
        tables,
        index,
        schema,
        encoder,
        label=cfg.label_mode,
        threshold=cfg.threshold,
        negatives=cfg.negatives,
        negative_sampling=cfg.negative_sampling,
        shares=(cfg.valid_share, cfg.test_share),
        seed=cfg.seed,
    )
    log(
        f"{len(data.label):,} examples: {len(data.rows(TRAIN)):,} train, {len(data.rows(VALID)):,} validation, "
        f"{len(data.rows(TEST)):,} test; inputs {encoder.describe()}"
    )
    result = fit_ranker(cfg, data, progress=progress, checkpoint_dir=checkpoint_dir, resume=resume)
    if not distributed.current().is_main:
        return None  # under DDP only rank 0 holds the selected model
    if result.resumed_from:
        log(f"resumed from epoch {result.resumed_from} ({checkpoint_dir})")
    test = {f"test_{k}": v for k, v in evaluate(result.model, data, data.rows(TEST), cfg.task).items()}
    log(result.summary({**result.best_metrics, **test}))
    return RankRun(cfg, tables, schema, index, data, result, test)
