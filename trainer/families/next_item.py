"""The next-item family: users' item sequences -> SASRec, GRU4Rec, Caser, content_sasrec.

Batches are training windows (trainer/data/batches.py), the loss one of trainer/families/losses.py,
validation full-ranking NDCG@k of each user's held-out last event (seen items excluded, users
scored in chunks so a large catalogue never needs a users x items matrix); a test file is never
seen here. The loop itself is trainer/loop.py.

Event kinds (optional, docs/training.md "Event kinds"): per user, event-kind tokens parallel
to the item tokens (trainer.data.encoding.encode_events) and float weights. Models that read
kinds get them as a second input; `target_events` restricts the predicted next events to those
kinds (and the validation target to the user's last one), `event_weights` and the weights scale
each position's loss. A batch is (inputs, targets[, older items][, history_events][, weights]).
"""

from __future__ import annotations

import dataclasses as dataclasses_
import functools
import itertools
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from recsys.schema import FIRST_TOKEN, PAD
from trainer import distributed
from trainer.data.batches import bucket_rows, fill_windows, last_windows, older_items, window_plan
from trainer.data.shards import agreed_steps
from trainer.data.split import check_event_kinds
from trainer.families.losses import LOSSES, NegativeSampler, log_prior, next_item_loss
from trainer.loop import FitResult, LoopConfig, init_weights
from trainer.loop import fit as run_loop
from trainer.metrics import rank_of_targets, ranking_metrics
from trainer.models import CLASSIC_MODELS, CONTENT_MODELS, MODELS
from trainer.models.custom import is_custom, load_model_class

__all__ = [
    "AUTO_SAMPLED",
    "FitResult",
    "NextItemFamily",
    "TrainConfig",
    "fit",
    "member_configs",
    "score_histories",
    "validate",
]

# What loss "auto" samples with above `sampled_above_items` (fields left at their defaults):
# 512 negatives drawn by popularity ** 0.75 plus 256 of the batch's own targets, shared by
# the whole batch (docs/results/catalogue-scale.md: about twice the NDCG@10 of 100 uniform ones).
AUTO_SAMPLED = {"negatives": 512, "negative_sampling": "popularity", "in_batch_negatives": 256}


@dataclass(frozen=True)
class TrainConfig(LoopConfig):
    model: str = "sasrec"  # key of trainer.models.MODELS, "ensemble" (of `members`), or your own: file.py:Class
    model_options: dict = field(default_factory=dict)  # your own model's keyword arguments (trainer/models/custom.py)
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
    # Classic baselines (trainer/models/classic.py); None: chosen on validation (trainer/families/classic.py)
    neighbours: int | None = None  # itemknn: most similar items kept per item (default 100)
    shrink: float | None = None  # itemknn: cosine shrinkage
    l2: float | None = None  # ease: ridge strength
    # Objective
    # auto | ce | sampled_softmax | bce | bpr (trainer/families/losses.py). auto: ce up to
    # `sampled_above_items` items, sampled_softmax above (a full softmax costs batch x positions x
    # items per step) with AUTO_SAMPLED's negatives where these fields keep their defaults; a
    # model with its own `default_loss` (bpr_mf) gets that. The loss that ran is in
    # FitResult.settings and the artifact.
    loss: str = "auto"
    sampled_above_items: int = 5_000  # auto's threshold (docs/results/catalogue-scale.md)
    negatives: int = 100  # sampled items per step (sampled_softmax) or per target (bce, bpr)
    in_batch_negatives: int = 0  # sampled_softmax: also this many of the batch's own targets as negatives
    # Item tables with sparse gradients and a lazy (SparseAdam) update under sampled losses, so a
    # step touches only the rows it used. None: on with sampled losses when possible (adam or
    # adamw, no weight_decay, one process); false keeps dense tables.
    sparse_items: bool | None = None
    valid_users: int = 0  # validate on this many users, drawn with `seed`; 0 = every user
    # Under torchrun, each rank reads only its own users' rows of a Parquet log (trainer/data/shards.py)
    # and batches them; rank 0 validates on its users, a 1/world sample (docs/training.md).
    shard_by_user: bool = False
    negative_sampling: str = "uniform"  # uniform | popularity (popularity ** negative_alpha)
    negative_alpha: float = 0.75  # exponent of popularity-weighted sampling (0 = uniform)
    logq_correction: bool = True  # sampled_softmax: subtract log q(item) (unbiased); false keeps the sampling bias
    popularity_debias: float = 0.0  # logit adjustment tau: train on logits + tau * log p(item); 0 = off
    # Leave what the user has already seen out of each position's softmax, as serving with
    # exclude_seen leaves it out of the ranking (ce only). None: on with ce. Turn it off for
    # data where users repeat items and recommendations include seen ones.
    mask_seen: bool | None = None
    lr: float = 3e-3  # peak learning rate (loop settings not listed here: trainer/loop.py LoopConfig)
    eval_every: int = 3  # epochs between validations
    patience: int = 4  # validations without improvement before stopping
    k: int = 10  # cut-off of the validation metric (NDCG@k selects the model)
    # Event kinds (data with an `event` column; docs/training.md "Event kinds")
    target_events: tuple = ()  # predict only next events of these kinds (all events are still read); () = every event
    event_weights: dict = field(default_factory=dict)  # loss weight per kind of the predicted event (default 1)
    read_events: bool | None = None  # model input: None = when the data has kinds and the model can; true; false
    # Export
    ann: str = "auto"  # ANN retrieval index: auto (from 100k items), on, off (trainer/export/ann.py)
    ann_backend: str = (
        "norm-pruned"  # norm-pruned (exact at its default alpha 1) | faiss-ivf | faiss-hnsw | usearch (recsys/ann.py)
    )
    int8: bool = False  # also export model.int8.onnx (dynamic quantisation, quality measured)
    # model = "ensemble": one table of settings per member, each overriding the ones above for
    # that member and naming its `model` (trainer/families/ensemble.py); the served scores are their sum,
    # each member scaled by its scores' spread on the validation histories.
    members: tuple = ()
    # Side information (sasrec, gru4rec, caser; trainer/families/side_info.py, docs/models.md)
    user_features: bool = False  # add a vector of the user's features (--users) at every position
    item_features: bool = False  # fuse each item's id embedding with its features (--items)

    @property
    def masks_seen(self) -> bool:
        return self.loss == "ce" if self.mask_seen is None else self.mask_seen

    def resolved(self, num_items: int) -> TrainConfig:
        """This config with `loss = "auto"` replaced by the loss it picks for `num_items` items."""
        if self.loss != "auto":
            return self
        own = getattr(MODELS.get(self.model, (None, None))[1], "default_loss", None)
        if own is not None:
            return dataclasses_.replace(self, loss=own)
        loss = "ce" if num_items <= self.sampled_above_items else "sampled_softmax"
        if self.mask_seen and loss != "ce":
            raise ValueError(
                f"mask_seen applies to loss ce only; loss auto picks {loss} over {num_items:,} items "
                f"(more than sampled_above_items {self.sampled_above_items:,}): set loss = ce or unset mask_seen"
            )
        if loss == "ce":
            return dataclasses_.replace(self, loss=loss)
        defaults = {f.name: f.default for f in fields(TrainConfig)}
        unset = {name: value for name, value in AUTO_SAMPLED.items() if getattr(self, name) == defaults[name]}
        return dataclasses_.replace(self, loss=loss, **unset)

    def model_config(self, num_items: int, num_events: int = 0):
        """The model's own config: the fields it shares with this one, its defaults for the rest;
        `num_events` > 0 for a model reading that many event kinds (ValueError if it cannot)."""
        if is_custom(self.model):
            raise ValueError("your own model takes model_options, not a model config")
        if self.model == "ensemble":
            raise ValueError(
                "an ensemble has no model config of its own; see trainer/families/ensemble.py member_configs"
            )
        known = {**MODELS, **CLASSIC_MODELS}
        if self.model not in known:
            raise ValueError(f"unknown model {self.model!r}; known: {', '.join(known)}")
        config_cls = known[self.model][0]
        shared = {f.name for f in fields(config_cls)} & {f.name for f in fields(self)}
        given = {name: getattr(self, name) for name in shared if getattr(self, name) is not None}
        if num_events:
            if not reads_events(config_cls):
                raise ValueError(
                    f"model {self.model!r} does not read event kinds: {_EVENT_MODELS}, or read_events = false"
                )
            given["num_events"] = num_events
        return config_cls(num_items=num_items, **given)

    def check(self) -> None:
        """Raises ValueError naming the first bad setting."""
        self.check_loop()
        choices = {
            "loss": ("auto", *LOSSES),
            "negative_sampling": ("uniform", "popularity"),
            "ann": ("auto", "on", "off"),
            "ann_backend": ("norm-pruned", "faiss-hnsw", "faiss-ivf", "usearch"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        for name in ("max_len", "negatives", "k", "min_word_items", "numeric_buckets", "sampled_above_items"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        for name in ("in_batch_negatives", "valid_users"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0; got {getattr(self, name)}")
        if self.mask_seen and self.loss not in ("ce", "auto"):
            raise ValueError(f"mask_seen applies to loss ce only; got loss {self.loss!r}")
        if self.vector_components < 0:
            raise ValueError(f"vector_components must be >= 0; got {self.vector_components}")
        for name in ("negative_alpha", "popularity_debias"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0; got {getattr(self, name)}")
        if self.model == "ensemble":
            if not self.members:
                raise ValueError("model ensemble needs `members`: one table of settings per member")
            member_configs(self)
        elif self.members:
            raise ValueError(f"`members` is for model ensemble only; model is {self.model!r}")
        elif is_custom(self.model):
            if getattr(load_model_class(self.model), "task", "next_item") != "next_item":
                raise ValueError(f"model {self.model!r} is not a next_item model")
        else:
            self.model_config(1)
        if not isinstance(self.target_events, tuple | list) or not all(
            isinstance(k, str) and k for k in self.target_events
        ):
            raise ValueError(f"target_events must be a list of event kinds; got {self.target_events!r}")
        if not isinstance(self.event_weights, dict):
            raise ValueError(f"event_weights must be a table of kind = weight; got {self.event_weights!r}")
        for kind, weight in self.event_weights.items():
            if not (isinstance(weight, int | float) and math.isfinite(weight) and weight >= 0):
                raise ValueError(f"event_weights[{kind!r}] must be a finite number >= 0; got {weight!r}")
        if self.read_events not in (None, True, False):
            raise ValueError(f"read_events must be true, false or unset; got {self.read_events!r}")
        if self.model_options and not is_custom(self.model):
            raise ValueError(
                'model_options are for your own model (model = "file.py:Class"); '
                "built-in models take their settings as fields"
            )
        if (self.user_features or self.item_features) and self.model not in ("sasrec", "gru4rec", "caser"):
            raise ValueError(
                f"user_features and item_features apply to sasrec, gru4rec and caser; model is {self.model!r}"
            )
        if (self.user_features or self.item_features) and (
            self.event_weights or self.target_events or self.read_events
        ):
            raise ValueError("user_features and item_features do not combine with event kinds yet")


def member_configs(cfg: TrainConfig) -> list[TrainConfig]:
    """The members' full configs: the ensemble's settings, then each member's own."""
    known = {f.name for f in dataclasses_.fields(TrainConfig)} - {"members"}
    out = []
    for i, own in enumerate(cfg.members):
        if not isinstance(own, dict) or "model" not in own:
            raise ValueError(f"ensemble member {i}: a table with at least a `model` key, got {own!r}")
        unknown = sorted(set(own) - known)
        if unknown:
            raise ValueError(f"ensemble member {i}: unknown setting(s) {', '.join(unknown)}")
        if "seed" in own:
            raise ValueError(
                f"ensemble member {i}: members take their seeds from the ensemble's (seed x members + i); remove `seed`"
            )
        if own["model"] == "ensemble" or own["model"] in CONTENT_MODELS or is_custom(own["model"]):
            raise ValueError(
                f"ensemble member {i}: members are built-in sequential models, not ensembles, "
                f"content models ({', '.join(CONTENT_MODELS)}) or your own; got {own['model']!r}"
            )
        base = dataclasses_.replace(cfg, members=())
        member = dataclasses_.replace(base, **own, seed=cfg.seed * len(cfg.members) + i)
        member.check()
        if member.max_len > cfg.max_len:
            raise ValueError(
                f"ensemble member {i} reads {member.max_len} items, more than the ensemble's "
                f"max_len {cfg.max_len} (what the server sends); raise the ensemble's max_len"
            )
        out.append(member)
    if out and max(m.max_len for m in out) != cfg.max_len:
        raise ValueError(
            f"the ensemble's max_len ({cfg.max_len}) must be its longest member's "
            f"({max(m.max_len for m in out)}): the server sends that many items"
        )
    return out


_EVENT_MODELS = "sasrec, gru4rec and caser read them"


def reads_events(model_or_config) -> bool:
    """Whether a model (or model config class/instance) can read event kinds / reads them."""
    cfg = getattr(model_or_config, "cfg", model_or_config)
    if isinstance(cfg, type):
        return "num_events" in {f.name for f in fields(cfg)}
    return bool(getattr(cfg, "num_events", 0))


@torch.no_grad()
def score_histories(
    model: nn.Module,
    histories: list[np.ndarray],
    max_len: int,
    batch: int = 512,
    events: list[np.ndarray] | None = None,
) -> np.ndarray:
    """Scores (U, N) of every item after each token history, in eval mode; `events`: the
    histories' event-kind tokens, for a model that reads them."""
    model.eval()
    device = next(itertools.chain(model.parameters(), model.buffers())).device
    out = []
    for i in range(0, len(histories), batch):
        x = torch.from_numpy(last_windows(histories[i : i + batch], max_len)).to(device)
        if events is None:
            out.append(model(x).cpu().numpy())
        else:
            kinds = torch.from_numpy(last_windows(events[i : i + batch], max_len)).to(device)
            out.append(model(x, kinds).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def validate(
    model: nn.Module,
    histories: list[np.ndarray],
    targets: np.ndarray,
    num_items: int,
    cfg: TrainConfig,
    chunk: int | None = None,
    events: list[np.ndarray] | None = None,
) -> dict:
    """Full-ranking metrics of `targets` (tokens) after `histories`, seen items excluded;
    `events`: the histories' event-kind tokens, for a model that reads them.

    Users are scored `chunk` at a time (default: ~16M scores a chunk), so memory holds chunk x
    num_items scores, not users x items."""
    chunk = chunk or max(1, min(1024, 2**24 // max(num_items, 1)))
    ranks = []
    for a in range(0, len(histories), chunk):
        part = histories[a : a + chunk]
        kinds = events[a : a + chunk] if events is not None else None
        scores = score_histories(model, part, cfg.max_len, events=kinds)
        excluded = np.zeros((len(part), num_items), dtype=bool)
        for row, h in enumerate(part):
            excluded[row, h - FIRST_TOKEN] = True
        ranks.append(rank_of_targets(scores, targets[a : a + chunk] - FIRST_TOKEN, excluded))
    return ranking_metrics(np.concatenate(ranks) if ranks else np.zeros(0), cfg.k)


class NextItemFamily:
    """Windows of every user's sequence minus its last event; selection on that last event.

    sequences: per user, int64 tokens oldest first. Users with fewer than 3 events train but
    are not validated. `model`: a prebuilt, untrained model instead of `cfg.model` from the
    registry (content models carry their item tables from construction). `validator`: a
    callable (model in eval mode) -> {metric: value} whose metrics join every validation row;
    `select` names the row metric that picks the best epoch (default NDCG@k).

    `events` (per user, event-kind tokens parallel to `sequences`, kinds `event_kinds` in token
    order) and `weights` (per user, float weights parallel to `sequences`) are optional. With
    `cfg.target_events`, a user's held-out event is their last event of those kinds (with at
    least one event before it); training then reads only the events before it (what follows
    it is its future), and users without one train whole and are not validated.
    """

    unit = "events"
    higher_is_better = True
    objective = None

    def __init__(
        self,
        cfg: TrainConfig,
        sequences: list[np.ndarray],
        num_items: int,
        *,
        model: nn.Module | None = None,
        validator=None,
        select: str | None = None,
        events: list[np.ndarray] | None = None,
        weights: list[np.ndarray] | None = None,
        event_kinds: tuple[str, ...] = (),
    ):
        cfg.check()
        cfg = cfg.resolved(num_items)
        self.cfg, self.num_items, self.prebuilt, self.validator = cfg, num_items, model, validator
        self.select = select or f"ndcg@{cfg.k}"
        self.sequences, self.events, self.weights = sequences, events, weights
        self.event_kinds = tuple(event_kinds)
        self._check_events()
        self.num_events = self._num_events()
        self.targeted = self._kind_table(dict.fromkeys(cfg.target_events, True), False, bool)
        self.kind_weight = self._kind_table(cfg.event_weights, 1.0, np.float32)
        self.weighted = weights is not None or self.kind_weight is not None
        if self.targeted is None:
            users = [i for i, s in enumerate(sequences) if len(s) >= 2]
            self.train_seqs = [sequences[i][:-1] for i in users]
            val = [(sequences[i][:-1], sequences[i][-1], i) for i in users if len(sequences[i]) >= 3]
        else:
            ends = {}  # user -> position of the held-out event
            for i, kinds in enumerate(events):
                hits = np.flatnonzero(self.targeted[kinds[1:]]) + 1
                ends[i] = int(hits[-1]) if len(hits) else len(kinds)
            users = [i for i in ends if ends[i] >= 2]  # a shorter history has no window
            self.train_seqs = [sequences[i][: ends[i]] for i in users]
            val = [
                (sequences[i][: ends[i]], sequences[i][ends[i]], i) for i in ends if 2 <= ends[i] < len(sequences[i])
            ]
        self._train_users = users
        # per-rank user shards: each rank batches only its own sequences (no Dist.shard in the loop)
        self.local_batches = cfg.shard_by_user and distributed.current().enabled
        if cfg.valid_users and len(val) > cfg.valid_users:  # a seeded sample, the same every epoch
            keep = np.sort(np.random.default_rng(cfg.seed).choice(len(val), cfg.valid_users, replace=False))
            val = [val[i] for i in keep]
        self.val_histories = [h for h, _, _ in val]
        self.val_targets = np.array([t for _, t, _ in val], dtype=np.int64)
        self.val_events = [events[i][: len(h)] for h, _, i in val] if self.num_events else None
        counts = self._target_counts(events, num_items)
        if self.local_batches:  # negatives and priors follow the whole log's popularity, not one shard's
            counts = sum(distributed.current().gather_objects(counts))
        sampler = (
            None
            if cfg.loss == "ce"
            else NegativeSampler(torch.from_numpy(counts), cfg.negative_sampling, cfg.negative_alpha)
        )
        prior = log_prior(torch.from_numpy(counts)) if cfg.popularity_debias else None
        self._loss = functools.partial(
            next_item_loss,
            loss=cfg.loss,
            sampler=sampler,
            negatives=cfg.negatives,
            logq=cfg.logq_correction,
            debias=cfg.popularity_debias,
            prior=prior,
            mask_seen=cfg.masks_seen,
            in_batch=cfg.in_batch_negatives,
        )
        self.sparse = self._sparse_items()
        self.settings = {"loss": cfg.loss, "sparse_items": self.sparse, "precision": cfg.precision}
        if cfg.valid_users:
            self.settings["valid_users"] = len(val)
        if self.num_events:
            self.settings["events"] = list(self.event_kinds)

    def _target_counts(self, events: list[np.ndarray] | None, num_items: int) -> np.ndarray:
        """(N,) training events per item column, counting only the predicted kinds under
        `target_events`: negatives, their log-Q correction and the popularity prior follow the
        distribution of what the model predicts, not of everything it reads."""
        if not self.train_seqs:
            return np.ones(num_items, dtype=np.int64)
        items = np.concatenate(self.train_seqs) - FIRST_TOKEN
        if self.targeted is not None:
            kinds = np.concatenate([events[i][: len(seq)] for i, seq in zip(self._train_users, self.train_seqs)])
            items = items[self.targeted[kinds]]
        return np.bincount(items, minlength=num_items)

    def _check_events(self) -> None:
        cfg, n = self.cfg, len(self.sequences)
        for name, values in (("events", self.events), ("weights", self.weights)):
            if values is not None and (
                len(values) != n or any(len(v) != len(s) for v, s in zip(values, self.sequences))
            ):
                raise ValueError(f"{name} must be parallel to the sequences: one value per event")
        if self.events is None and (cfg.target_events or cfg.event_weights or cfg.read_events):
            raise ValueError(
                "target_events, event_weights and read_events need event kinds: an `event` column in the interactions"
            )
        if self.events is not None:
            check_event_kinds(cfg.target_events, self.event_kinds, "target_events")
            check_event_kinds(cfg.event_weights, self.event_kinds, "event_weights")

    def _num_events(self) -> int:
        """How many event kinds the model reads (0: none)."""
        cfg = self.cfg
        if self.events is None or cfg.read_events is False:
            return 0
        config_cls = MODELS.get(cfg.model, (None, None))[0]
        if self.prebuilt is not None or config_cls is None or not reads_events(config_cls):
            if cfg.read_events:
                raise ValueError(
                    f"model {cfg.model!r} does not read event kinds: {_EVENT_MODELS}, or read_events = false"
                )
            return 0
        return len(self.event_kinds)

    def _kind_table(self, values: dict, default, dtype) -> np.ndarray | None:
        """A lookup by event token of `values` ({kind: value}); `default` for other kinds, PAD
        and OOV; None when `values` is empty."""
        if not values:
            return None
        table = np.full(len(self.event_kinds) + FIRST_TOKEN, default, dtype=dtype)
        for i, kind in enumerate(self.event_kinds):
            table[i + FIRST_TOKEN] = values.get(kind, default)
        return table

    def _sparse_items(self) -> bool:
        """Whether the item tables train with sparse gradients (see TrainConfig.sparse_items)."""
        cfg = self.cfg
        possible = cfg.optimizer in ("adam", "adamw") and not cfg.weight_decay and not distributed.current().enabled
        if cfg.sparse_items is None:
            return cfg.loss != "ce" and possible and self.prebuilt is None and not is_custom(cfg.model)
        if cfg.sparse_items and not possible:
            raise ValueError("sparse_items needs optimizer adam or adamw, no weight_decay and one process")
        return cfg.sparse_items

    def build_model(self) -> nn.Module:
        cfg = self.cfg
        model = self.prebuilt if self.prebuilt is not None else build_model(cfg, self.num_items, self.num_events)
        init_weights(model, cfg.init)
        if self.sparse:
            for table in _item_tables(model, self.num_items):
                table.sparse = True
        return model

    def finish(self, model: nn.Module) -> None:
        """Dense tables again for export and scoring (the loop calls this after training)."""
        for table in _item_tables(model, self.num_items):
            table.sparse = False

    def batches(self, rng: np.random.Generator, full: bool = False):
        """(inputs, targets[, older items][, history_events][, weights]) windows; `full`: the
        held-out events (and what follows them) too."""
        if full:
            users = [i for i, s in enumerate(self.sequences) if len(s) >= 2]
            sequences = [self.sequences[i] for i in users]
        else:
            users, sequences = self._train_users, self.train_seqs
        # int32 windows (half the memory) whenever the tokens fit; batches are widened to int64
        dtype = np.int32 if self.num_items + FIRST_TOKEN < 2**31 else np.int64
        plan = window_plan(sequences, self.cfg.max_len, rng)
        inputs, targets = fill_windows(sequences, plan, dtype)
        origins = plan.origins
        kinds_in = kinds_out = weights = None
        if self.events is not None and (self.num_events or self.targeted is not None or self.kind_weight is not None):
            kinds_in, kinds_out = fill_windows(
                [self.events[i][: len(s)] for i, s in zip(users, sequences)], plan, np.int32
            )
        if self.weighted:
            weights = np.ones(targets.shape, dtype=np.float32)
            if self.weights is not None:
                cut = [self.weights[i][: len(s)] for i, s in zip(users, sequences)]
                weights = fill_windows(cut, plan, np.float32, (1,))[0]
            if self.kind_weight is not None:
                weights *= self.kind_weight[kinds_out]
        if self.targeted is not None:
            targets[~self.targeted[kinds_out]] = PAD  # next events of other kinds: read, not predicted
            keep = np.flatnonzero((targets != PAD).any(axis=1))  # windows left with something to predict
            inputs, targets, origins = inputs[keep], targets[keep], origins[keep]
            kinds_in = kinds_in[keep]
            weights = weights[keep] if weights is not None else None
        arrays = [inputs, targets]
        if self.num_events:
            arrays.append(kinds_in)
        if weights is not None:
            arrays.append(weights)
        size, steps = self.cfg.batch_size, None
        if self.local_batches:  # rank batches of batch_size / world keep the global batch; DDP needs equal steps
            dist = distributed.current()
            size = -(-size // dist.world_size)
            steps = agreed_steps(-(-len(inputs) // size), dist)
            if steps == 0:
                raise ValueError("shard_by_user: a rank has no training windows (fewer users than ranks?)")
        self.epoch_steps = -(-len(inputs) // size) if steps is None else steps
        for batch, rows in itertools.islice(_batches(arrays, self.cfg, rng, size), steps):
            if self.cfg.masks_seen:  # the loss also masks what each user saw before the window
                batch.insert(2, torch.from_numpy(older_items(sequences, origins, rows)))
            yield tuple(batch)

    def count(self, batch) -> int:
        return int((batch[1] != 0).sum())

    def loss(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
        rest = list(extra)
        older = rest.pop(0) if self.cfg.masks_seen else None
        kinds = rest.pop(0) if self.num_events else None
        weights = rest.pop(0) if self.weighted else None
        loss = self._loss(model, inputs, targets, older, history_events=kinds, weights=weights)
        if hasattr(model, "auxiliary_loss"):  # a model's own extra objective (content_sasrec's content loss)
            loss = loss + model.auxiliary_loss(inputs, targets)
        return loss

    def validate(self, model: nn.Module) -> dict[str, float]:
        row = validate(model, self.val_histories, self.val_targets, self.num_items, self.cfg, events=self.val_events)
        if self.validator is not None:
            row.update(self.validator(model.eval()))
        return row

    def fingerprint(self) -> dict:
        out = {
            "num_items": self.num_items,
            "users": len(self.sequences),
            "events": int(sum(len(s) for s in self.sequences)),
        }
        if self.event_kinds:
            out["event_kinds"] = list(self.event_kinds)
        return out


def _item_tables(model: nn.Module, num_items: int) -> list[nn.Embedding]:
    """The model's per-item embedding tables (num_items + FIRST_TOKEN rows)."""
    kinds = getattr(model, "event_emb", None)
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.Embedding) and m.num_embeddings == num_items + FIRST_TOKEN and m is not kinds
    ]


def build_model(cfg: TrainConfig, num_items: int, num_events: int = 0) -> nn.Module:
    """An untrained `cfg.model` from the registry (trainer/models, or a user's own module);
    `num_events` > 0: reading that many event kinds."""
    if is_custom(cfg.model):
        return load_model_class(cfg.model)(num_items=num_items, max_len=cfg.max_len, **cfg.model_options)
    return MODELS[cfg.model][1](cfg.model_config(num_items, num_events))


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
    events: list[np.ndarray] | None = None,
    weights: list[np.ndarray] | None = None,
    event_kinds: tuple[str, ...] = (),
) -> FitResult:
    """Trains a next-item model through the loop (trainer/loop.py); see NextItemFamily. The
    classic baselines are fitted in closed form instead (trainer/families/classic.py). When the
    model reads event kinds, `result.settings["events"]` lists them in token order."""
    if cfg.user_features or cfg.item_features:
        raise ValueError(
            "user_features and item_features need the user and item tables: train through "
            "trainer/families/side_info.py train_side_info (recsys train does)"
        )
    if cfg.model in CLASSIC_MODELS:
        from trainer.families.classic import fit_classic

        if cfg.target_events or cfg.event_weights or cfg.read_events:
            raise ValueError(
                f"the classic baseline {cfg.model!r} takes no event kinds: unset target_events, event_weights, read_events"
            )
        return fit_classic(cfg, sequences, num_items, progress=progress)
    family = NextItemFamily(
        cfg,
        sequences,
        num_items,
        model=model,
        validator=validator,
        select=select,
        events=events,
        weights=weights,
        event_kinds=event_kinds,
    )
    return run_loop(family.cfg, family, progress=progress, checkpoint_dir=checkpoint_dir, resume=resume)


def _batches(arrays: list[np.ndarray], cfg: TrainConfig, rng: np.random.Generator, size: int):
    """Shuffled ([tensors of a batch], window rows) from windows `arrays` (the first the
    inputs, all aligned with them; integers widened to int64), `size` windows a batch; with
    `cfg.bucket`, windows of similar length together, trimmed of their all-padding left columns."""

    def tensor(array: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(array)
        return t.long() if not t.is_floating_point() else t

    if cfg.bucket:
        for rows, width in bucket_rows(arrays[0], size, rng):
            yield [tensor(a[rows, -width:]) for a in arrays], rows
        return
    order = rng.permutation(len(arrays[0]))
    tensors = [torch.from_numpy(a) for a in arrays]
    for i in range(0, len(order), size):
        rows = order[i : i + size]
        idx = torch.from_numpy(rows)
        yield [t[idx].long() if not t.is_floating_point() else t[idx] for t in tensors], rows
