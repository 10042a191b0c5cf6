"""Examples for the feature-based rankers: (user, candidate item, recent history) -> label.

Features are encoded only through the schema's FeatureSpec encoders (`FeatureEncoder`), from
the same plain values the feature service serves (trainer.data.tables.feature_rows), so serving can
rebuild every input exactly. Labels come from one of:

    threshold  every rated event; label = rating >= threshold (e.g. "liked" = 4 stars or more)
    implicit   every event is a positive; `negatives` items the user never touched are drawn
               per positive (uniformly or by training popularity ** 0.75) as 0-labelled rows
    rating     every rated event; label = the rating (the rating model's target)

An example's history is the user's events strictly before it in time order (ties in file
order), the most recent `history_len` of them, left-padded: what serving would have read just
before the event. Sampled negatives share their positive's history. Events (with their
negatives) are split at random, by seed, into train / validation / test.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from recsys.artifact import ItemIndex
from recsys.encoding import FeatureEncoder
from recsys.schema import FIRST_TOKEN, OOV, PAD, FeatureSchema
from trainer.data.columnar import group_order
from trainer.data.tables import Tables, feature_rows
from trainer.models.fields import FieldLayout

__all__ = ["LABELS", "FeatureEncoder", "RankingData", "build_ranking_data", "field_layout"]

LABELS = ("threshold", "implicit", "rating")
TRAIN, VALID, TEST = 0, 1, 2


def field_layout(encoder: FeatureEncoder, num_items: int) -> FieldLayout:
    """What a model built for this encoder reads."""
    return FieldLayout(
        num_items=num_items,
        user_cat=tuple(len(s.vocabulary) + FIRST_TOKEN for s in encoder.user_cat),
        n_user_num=len(encoder.user_num),
        item_cat=tuple(len(s.vocabulary) + FIRST_TOKEN for s in encoder.item_cat),
        n_item_num=len(encoder.item_num),
        item_multi=tuple(len(s.vocabulary) + FIRST_TOKEN for s in encoder.item_multi),
        history=encoder.history_len > 0,
    )


@dataclass
class RankingData:
    """Encoded tables and examples. Item tables are indexed by item token (rows PAD and OOV
    are all-PAD / zero), user tables by user row."""

    encoder: FeatureEncoder
    num_items: int
    user_ids: list[str]
    user_cat: np.ndarray  # (U, n_user_cat) int64
    user_num: np.ndarray  # (U, n_user_num) float32
    item_cat: np.ndarray  # (N + 2, n_item_cat) int64
    item_num: np.ndarray  # (N + 2, n_item_num) float32
    item_multi: np.ndarray  # (N + 2, n_item_multi, M) int64
    user_token: np.ndarray  # (U,) int64 user-id token per user row: FIRST_TOKEN + position among
    #   users with training examples (the artifact's user index), OOV for the others
    user_row: np.ndarray  # (E,) int64, one per example
    item: np.ndarray  # (E,) int64 item tokens
    history: np.ndarray  # (E, L) int64, left-padded
    label: np.ndarray  # (E,) float32: 0/1 or the rating
    split: np.ndarray  # (E,) int8: 0 train, 1 validation, 2 test
    rating: np.ndarray | None = None  # (E,) float32 raw ratings (label "threshold"), for ordinal training

    def rows(self, part: int) -> np.ndarray:
        return np.flatnonzero(self.split == part)

    @property
    def user_index(self) -> list[str]:
        """Ids of the users with a user-id token, in token order (token = position + 2)."""
        known = np.flatnonzero(self.user_token >= FIRST_TOKEN)
        return [self.user_ids[r] for r in known[np.argsort(self.user_token[known])]]

    @property
    def user_vocab(self) -> int:
        """User-id vocabulary size: known users + PAD + OOV."""
        return int(self.user_token.max(initial=OOV)) + 1


def _encode_tables(
    tables: Tables, index: ItemIndex, schema: FeatureSchema, encoder: FeatureEncoder, user_ids: list[str]
) -> dict[str, np.ndarray]:
    user_feats = {
        r["user_id"]: r["features"]
        for r in (feature_rows(tables.users, schema.user_features, "user_id") if tables.users is not None else ())
    }
    item_feats = {
        r["item_id"]: r["features"]
        for r in (feature_rows(tables.items, schema.item_features, "item_id") if tables.items is not None else ())
    }
    users = [encoder.encode_user(user_feats.get(u, {})) for u in user_ids]
    n = len(index.item_ids) + FIRST_TOKEN
    item_cat = np.full((n, len(encoder.item_cat)), PAD, dtype=np.int64)
    item_num = np.zeros((n, len(encoder.item_num)), dtype=np.float32)
    item_multi = np.full((n, len(encoder.item_multi), encoder.multi_len), PAD, dtype=np.int64)
    for i, item in enumerate(index.item_ids):
        cat, num, multi = encoder.encode_item(item_feats.get(item, {}))
        item_cat[i + FIRST_TOKEN], item_num[i + FIRST_TOKEN] = cat, num
        if multi:
            item_multi[i + FIRST_TOKEN] = multi
    return {
        "user_cat": np.array([c for c, _ in users], dtype=np.int64).reshape(len(users), len(encoder.user_cat)),
        "user_num": np.array([x for _, x in users], dtype=np.float32).reshape(len(users), len(encoder.user_num)),
        "item_cat": item_cat,
        "item_num": item_num,
        "item_multi": item_multi,
    }


def longest_multi(tables: Tables, schema: FeatureSchema, cap: int) -> int:
    """The most tokens any item has in one multi-valued feature, at most `cap` (at least 1)."""
    if tables.items is None:
        return 1
    lengths = [
        len(v)
        for r in feature_rows(tables.items, schema.item_features, "item_id")
        for v in r["features"].values()
        if isinstance(v, list)
    ]
    return max(1, min(cap, max(lengths, default=1)))


def build_ranking_data(
    tables: Tables,
    index: ItemIndex,
    schema: FeatureSchema,
    encoder: FeatureEncoder,
    *,
    label: str = "threshold",
    threshold: float = 4.0,
    negatives: int = 1,
    negative_sampling: str = "uniform",
    shares: tuple[float, float] = (0.1, 0.1),
    seed: int = 0,
) -> RankingData:
    """Encodes the tables and builds labelled examples split train/validation/test.

    `shares` are the validation and test shares of events (the rest trains). Raises ValueError
    for an unknown label mode or a rating-based mode without a rating column.
    """
    if label not in LABELS:
        raise ValueError(f"label must be one of {', '.join(LABELS)}; got {label!r}")
    inter = tables.interactions
    if label != "implicit" and "rating" not in inter.columns:
        raise ValueError(f"label={label!r} needs a rating column; use label='implicit' for implicit feedback")
    rng = np.random.default_rng(seed)
    token_of = {item: i + FIRST_TOKEN for i, item in enumerate(index.item_ids)}
    user_ids = list(pd.unique(inter["user_id"]))
    row_of = {u: r for r, u in enumerate(user_ids)}
    users = inter["user_id"].map(row_of).to_numpy(dtype=np.int64)
    items = inter["item_id"].map(token_of).to_numpy(dtype=np.int64)
    history = _histories(users, items, encoder.history_len)
    n = len(inter)
    # Random split of events by seed: shuffled positions, first shares go to validation and test.
    split = np.zeros(n, dtype=np.int8)
    order = rng.permutation(n)
    n_valid, n_test = round(shares[0] * n), round(shares[1] * n)
    split[order[:n_valid]], split[order[n_valid : n_valid + n_test]] = VALID, TEST
    if label == "implicit":
        labels = np.ones(n, dtype=np.float32)
    else:
        ratings = inter["rating"].to_numpy(dtype=np.float32)
        labels = (ratings >= threshold).astype(np.float32) if label == "threshold" else ratings
    raw = ratings if label == "threshold" else None
    if label == "implicit" and negatives > 0:
        train_counts = np.bincount(items[split == TRAIN], minlength=len(index.item_ids) + FIRST_TOKEN)
        neg = _sample_negatives(users, items, negatives, negative_sampling, train_counts, rng)  # (n, k)
        users = np.concatenate([users, np.repeat(users, negatives)])
        history = np.concatenate([history, np.repeat(history, negatives, axis=0)])
        split = np.concatenate([split, np.repeat(split, negatives)])
        items = np.concatenate([items, neg.ravel()])
        labels = np.concatenate([labels, np.zeros(n * negatives, dtype=np.float32)])
    encoded = _encode_tables(tables, index, schema, encoder, user_ids)
    trained = np.zeros(len(user_ids), dtype=bool)
    trained[users[split == TRAIN]] = True
    user_token = np.full(len(user_ids), OOV, dtype=np.int64)
    user_token[trained] = np.arange(int(trained.sum())) + FIRST_TOKEN
    return RankingData(
        encoder=encoder,
        num_items=len(index.item_ids),
        user_ids=user_ids,
        **encoded,
        user_token=user_token,
        user_row=users,
        item=items,
        history=history,
        label=labels,
        split=split,
        rating=raw,
    )


def _histories(users: np.ndarray, items: np.ndarray, length: int) -> np.ndarray:
    """(E, L) tokens of each event's user's previous `length` events, left-padded."""
    out = np.full((len(users), length), PAD, dtype=np.int64)
    if length == 0 or len(users) == 0:
        return out
    rows = group_order(users, int(users.max()) + 1)  # events grouped by user, in time order within one
    grouped = users[rows]
    starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
    sizes = np.diff(np.r_[starts, len(rows)])
    position = np.arange(len(rows)) - np.repeat(starts, sizes)  # index of each event in its user's sequence
    sequence = items[rows]
    for back in range(1, length + 1):  # column L - back holds the event `back` steps earlier
        has = position >= back
        out[rows[has], length - back] = sequence[np.flatnonzero(has) - back]
    return out


def _sample_negatives(
    users: np.ndarray, items: np.ndarray, k: int, sampling: str, counts: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """(n, k) item tokens the event's user never touched, uniform or ∝ counts ** 0.75."""
    if sampling not in ("uniform", "popularity"):
        raise ValueError(f"negative_sampling must be uniform or popularity; got {sampling!r}")
    n_tokens = len(counts)
    weights = np.zeros(n_tokens)
    weights[FIRST_TOKEN:] = 1.0 if sampling == "uniform" else counts[FIRST_TOKEN:] ** 0.75 + 1e-3
    p = weights / weights.sum()
    seen = np.unique(users * n_tokens + items)  # (user, item) keys of every event
    out = rng.choice(n_tokens, size=(len(users), k), p=p)
    for _ in range(100):  # redraw collisions with seen items; a handful of rounds suffices
        bad = np.isin(np.repeat(users, k).reshape(-1, k) * n_tokens + out, seen)
        if not bad.any():
            return out
        out[bad] = rng.choice(n_tokens, size=int(bad.sum()), p=p)
    raise ValueError("could not sample negatives: some users have touched (almost) every item")
