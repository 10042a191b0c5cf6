"""Raw tables -> what every family trains on: the item index, token sequences, the schema."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd

from recsys.artifact import ItemIndex
from recsys.schema import FIRST_TOKEN, OOV, FeatureSchema
from trainer.data.columnar import group_order
from trainer.data.tables import Tables, infer_feature_specs

__all__ = [
    "build_item_index",
    "build_schema",
    "encode_events",
    "encode_histories",
    "encode_weights",
    "event_tokens",
    "event_vocabulary",
    "history_rows",
]


def build_item_index(interactions: pd.DataFrame, items: pd.DataFrame | None) -> ItemIndex:
    """Items of the interactions, most popular first (ties by id), with titles where known."""
    codes, uniques = pd.factorize(interactions["item_id"])
    counts = np.bincount(codes, minlength=len(uniques))
    ids = np.asarray(uniques, dtype=object)
    by_id = np.empty(len(ids), dtype=np.int64)
    by_id[np.argsort(ids, kind="stable")] = np.arange(len(ids))  # rank of each id in id order
    order = np.lexsort((by_id, -counts))
    ids, counts = ids[order].tolist(), counts[order].tolist()
    titles = [""] * len(ids)
    if items is not None and "title" in items.columns:
        lookup = items.set_index("item_id")["title"]
        lookup = lookup[~lookup.index.duplicated(keep="last")]
        titles = ["" if pd.isna(t := lookup.get(i, "")) else str(t) for i in ids]
    return ItemIndex(tuple(ids), tuple(titles), tuple(counts))


def encode_histories(interactions: pd.DataFrame, index: ItemIndex) -> tuple[list[str], list[np.ndarray]]:
    """Per user (in order of first appearance), the tokens of their events, oldest first.

    Raises ValueError when an item of the interactions is not in `index`."""
    codes, uniques = pd.factorize(interactions["item_id"])
    token_of = pd.Index(index.item_ids).get_indexer(uniques)  # per distinct item: position or -1
    if (token_of < 0).any():
        unknown = [str(u) for u in np.asarray(uniques, dtype=object)[token_of < 0][:5]]
        raise ValueError(f"items not in the item index: {unknown}")
    tokens = (token_of + FIRST_TOKEN).astype(np.int64)[codes]
    users, rows, bounds = _rows_by_user(interactions)
    return users, _split(tokens[rows], bounds, users)


def event_vocabulary(interactions: pd.DataFrame) -> tuple[str, ...]:
    """The event kinds of `interactions`, sorted: kind i has token i + FIRST_TOKEN. Empty
    without an event column (the data has no kinds)."""
    if "event" not in interactions.columns:
        return ()
    return tuple(sorted(str(kind) for kind in pd.unique(interactions["event"])))


def event_tokens(kinds: np.ndarray | pd.Series, vocabulary: tuple[str, ...]) -> np.ndarray:
    """int64 token per kind: vocabulary[i] -> i + FIRST_TOKEN; unknown kinds, "" and missing
    values -> OOV (what serving does with a kind the model never saw)."""
    codes, uniques = pd.factorize(pd.Series(kinds, dtype=object), use_na_sentinel=True)
    known = pd.Index(list(vocabulary), dtype=object).get_indexer(pd.Index(uniques, dtype=object))
    lookup = np.append(np.where(known >= 0, known + FIRST_TOKEN, OOV), OOV).astype(np.int64)
    return lookup[codes]  # code -1 (missing) picks the trailing OOV


def encode_events(interactions: pd.DataFrame, vocabulary: tuple[str, ...]) -> list[np.ndarray] | None:
    """Per user, the event tokens (event_tokens) of their events: the same users, order and
    lengths as encode_histories. None without an event column."""
    if "event" not in interactions.columns:
        return None
    tokens = event_tokens(interactions["event"].to_numpy(dtype=object), vocabulary)
    users, rows, bounds = _rows_by_user(interactions)
    return _split(tokens[rows], bounds, users)


def encode_weights(interactions: pd.DataFrame) -> list[np.ndarray] | None:
    """Per user, float32 `weight` of their events, aligned with encode_histories. None without
    a weight column."""
    if "weight" not in interactions.columns:
        return None
    weights = interactions["weight"].to_numpy(dtype=np.float32)
    users, rows, bounds = _rows_by_user(interactions)
    return _split(weights[rows], bounds, users)


def history_rows(interactions: pd.DataFrame) -> Iterator[dict]:
    """{"user_id", "item_ids", "timestamps"[, "events"]} per user (order of first appearance),
    oldest first; "events" (the kinds, str) when the interactions have an event column."""
    codes, uniques = pd.factorize(interactions["item_id"])
    names = np.asarray(uniques, dtype=object)
    stamps = interactions["timestamp"].to_numpy(dtype=np.int64)
    kinds = interactions["event"].to_numpy(dtype=object) if "event" in interactions.columns else None
    users, rows, bounds = _rows_by_user(interactions)
    for user, part in zip(users, _split(rows, bounds, users), strict=True):
        row = {"user_id": user, "item_ids": names[codes[part]].tolist(), "timestamps": stamps[part].tolist()}
        if kinds is not None:
            row["events"] = kinds[part].tolist()
        yield row


def _rows_by_user(interactions: pd.DataFrame) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(users in order of first appearance, row positions grouped by user and in row order
    within a user, where each user's positions end but the last)."""
    codes, uniques = pd.factorize(interactions["user_id"])
    rows = group_order(codes, len(uniques))
    bounds = np.cumsum(np.bincount(codes, minlength=len(uniques)))[:-1]
    return list(uniques), rows, bounds


def _split(values: np.ndarray, bounds: np.ndarray, users: list[str]) -> list[np.ndarray]:
    """`values` cut at `bounds`, one view per user (np.split's per-part overhead, several
    times a slice's, dominates with many short histories)."""
    if not users:
        return []
    edges = [0, *bounds.tolist(), len(values)]
    return [values[a:b] for a, b in zip(edges[:-1], edges[1:], strict=True)]


def build_schema(tables: Tables, index: ItemIndex, max_len: int) -> FeatureSchema:
    return FeatureSchema(
        user_features=infer_feature_specs(tables.users, "user_id") if tables.users is not None else (),
        item_features=infer_feature_specs(tables.items, "item_id") if tables.items is not None else (),
        max_history=max_len,
        item_index_sha256=index.sha256,
    )
