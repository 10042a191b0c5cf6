"""Raw tables -> what every family trains on: the item index, token sequences, the schema."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd

from recsys.artifact import ItemIndex
from recsys.schema import FIRST_TOKEN, FeatureSchema
from trainer.data.tables import Tables, infer_feature_specs

__all__ = ["build_item_index", "build_schema", "encode_histories", "history_rows"]


def build_item_index(interactions: pd.DataFrame, items: pd.DataFrame | None) -> ItemIndex:
    """Items of the interactions, most popular first (ties by id), with titles where known."""
    counts = interactions["item_id"].value_counts()
    order = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    ids = [item for item, _ in order]
    titles = [""] * len(ids)
    if items is not None and "title" in items.columns:
        lookup = items.set_index("item_id")["title"]
        lookup = lookup[~lookup.index.duplicated(keep="last")]
        titles = ["" if pd.isna(t := lookup.get(i, "")) else str(t) for i in ids]
    return ItemIndex(tuple(ids), tuple(titles), tuple(int(c) for _, c in order))


def encode_histories(interactions: pd.DataFrame, index: ItemIndex) -> tuple[list[str], list[np.ndarray]]:
    """Per user (in order of first appearance), the tokens of their events, oldest first."""
    token = {item: i + FIRST_TOKEN for i, item in enumerate(index.item_ids)}
    tokens = interactions["item_id"].map(token).to_numpy(dtype=np.int64)
    users, sequences = [], []
    for user, rows in interactions.groupby("user_id", sort=False).indices.items():
        users.append(user)
        sequences.append(tokens[rows])
    return users, sequences


def history_rows(interactions: pd.DataFrame) -> Iterator[dict]:
    for user, group in interactions.groupby("user_id", sort=False):
        yield {
            "user_id": user,
            "item_ids": group["item_id"].tolist(),
            "timestamps": [int(t) for t in group["timestamp"]],
        }


def build_schema(tables: Tables, index: ItemIndex, max_len: int) -> FeatureSchema:
    return FeatureSchema(
        user_features=infer_feature_specs(tables.users, "user_id") if tables.users is not None else (),
        item_features=infer_feature_specs(tables.items, "item_id") if tables.items is not None else (),
        max_history=max_len,
        item_index_sha256=index.sha256,
    )
