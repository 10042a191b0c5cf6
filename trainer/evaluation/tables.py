"""The rows to evaluate on, and what the artifact itself knows about users and items.

Test files are CSV, TSV (RecBole's `name:type` headers accepted) or Parquet with user_id and
item_id columns and optionally `label` (0/1) and `rating`; ids are read as strings. Model
inputs come only from the artifact's own tables, as the server's would from the feature store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recsys.artifact import HISTORIES, ITEMS, USERS, ItemIndex, Manifest, read_jsonl, read_manifest
from recsys.schema import FIRST_TOKEN, OOV

__all__ = ["TARGETS", "ArtifactTables", "read_pairs", "read_rows"]

TARGETS = ("label", "rating")  # optional columns kept by read_rows, as float64 (NaN where missing)
EMPTY = np.zeros(0, dtype=np.int64)


def read_rows(path: str | Path, columns: dict[str, str] | None = None) -> pd.DataFrame:
    """user_id, item_id (str) and whichever of TARGETS the file has; rows without both ids are
    dropped, other columns ignored. `columns` ({standard: yours}) renames your columns first.
    Raises ValueError for an unknown format, a missing id column or no rows."""
    path = Path(path)
    if path.suffix == ".parquet":
        df = pd.read_parquet(path)
    elif path.suffix in (".csv", ".tsv", ".txt", ".inter"):
        df = pd.read_csv(path, sep="\t" if path.suffix in (".tsv", ".inter") else ",", dtype=str)
        df.columns = [c.split(":")[0] for c in df.columns]
    else:
        raise ValueError(f"{path}: unsupported format; use .csv, .tsv or .parquet")
    df = df.rename(columns={yours: standard for standard, yours in (columns or {}).items()})
    missing = {"user_id", "item_id"} - set(df.columns)
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {', '.join(sorted(missing))} (found {', '.join(map(str, df.columns))}); "
            "name yours with --columns user_id=YOURS,item_id=YOURS"
        )
    df = df.dropna(subset=["user_id", "item_id"])
    out = df[["user_id", "item_id"]].astype(str)
    for name in TARGETS:
        if name in df.columns:
            out[name] = pd.to_numeric(df[name], errors="coerce").astype(np.float64)
    if out.empty:
        raise ValueError(f"{path}: no user_id,item_id rows")
    return out.reset_index(drop=True)


def read_pairs(path: str | Path) -> pd.DataFrame:
    """user_id,item_id rows (other columns ignored) from CSV, TSV or Parquet, ids as strings."""
    return read_rows(path)[["user_id", "item_id"]]


@dataclass(frozen=True)
class ArtifactTables:
    """An artifact's manifest, item index and raw tables, keyed by id."""

    manifest: Manifest
    index: ItemIndex
    token: dict[str, int]  # item id -> item token (its item_index.json column + FIRST_TOKEN)
    histories: dict[str, np.ndarray]  # user id -> item tokens, oldest first; OOV for unindexed items
    user_features: dict[str, dict[str, Any]]  # user id -> raw features (users.jsonl)
    item_features: dict[str, dict[str, Any]]  # item id -> raw features (items.jsonl)
    known_users: frozenset[str]  # users with a history or a users.jsonl row: the store's users
    # user id -> event-kind tokens aligned with `histories`, for a model that reads kinds
    # (manifest.training["events"]): kind i -> i + FIRST_TOKEN, other or no kind -> OOV
    history_events: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def read(cls, artifact_dir: str | Path) -> ArtifactTables:
        directory = Path(artifact_dir)
        manifest = read_manifest(directory)
        index = ItemIndex.read(directory)
        token = {item: i + FIRST_TOKEN for i, item in enumerate(index.item_ids)}
        kinds = {kind: i + FIRST_TOKEN for i, kind in enumerate(manifest.training.get("events") or ())}
        histories, events = {}, {}
        for row in read_jsonl(directory / HISTORIES):
            user = str(row["user_id"])
            histories[user] = np.array([token.get(str(i), OOV) for i in row["item_ids"]], dtype=np.int64)
            if kinds:
                recorded = row.get("events") or [""] * len(row["item_ids"])
                events[user] = np.array([kinds.get(str(k), OOV) for k in recorded], dtype=np.int64)
        users = {str(r["user_id"]): r.get("features") or {} for r in read_jsonl(directory / USERS)}
        items = {str(r["item_id"]): r.get("features") or {} for r in read_jsonl(directory / ITEMS)}
        known = frozenset(histories) | frozenset(users)
        return cls(manifest, index, token, histories, users, items, known, events)

    @property
    def popularity(self) -> np.ndarray:
        """(N,) float32 training interactions per item column: the fallback scores."""
        return np.asarray(self.index.popularity, dtype=np.float32)

    def history(self, user: str) -> np.ndarray:
        """The user's item tokens, oldest first (empty for an unknown user). Read-only."""
        return self.histories.get(user, EMPTY)

    def events(self, user: str) -> np.ndarray:
        """The event-kind tokens aligned with `history(user)` (empty when the model reads no kinds)."""
        return self.history_events.get(user, EMPTY)
