"""Model inputs of feature-based models (task "rank" or "rating"), built from served features.

The artifact's manifest lists which inputs its model takes (sources user.cat, user.num,
item.id, item.cat, item.num, item.multi, user.history) and training["inputs"] records the
feature order per input; `recsys.encoding.FeatureEncoder` turns plain values into numbers the
same way the trainer did. Item rows are encoded once into arrays indexed by item token and
refreshed from the feature service; user rows are encoded per request. A next_item model
whose inputs come only from USER_SOURCES (a two-tower user tower) gets one row per user.

Numeric values too far from the training mean to be measurements (`FeatureSpec.encode_numeric`)
encode as missing, so every float32 input is finite; `out_of_range` counts them, by feature,
and the first one of each feature is logged.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from recsys.artifact import Manifest
from recsys.encoding import FeatureEncoder
from recsys.errors import FailedPrecondition
from recsys.schema import FIRST_TOKEN, OOV, PAD, FeatureSpec

__all__ = ["FEATURE_SOURCES", "USER_SOURCES", "FeatureInputs"]

log = logging.getLogger(__name__)

FEATURE_SOURCES = {
    "user.cat": "user_cat",
    "user.num": "user_num",
    "item.id": "item_id",
    "item.cat": "item_cat",
    "item.num": "item_num",
    "item.multi": "item_multi",
    "user.history": "history",
    "user.history_events": "history_events",  # event-kind tokens aligned with user.history
    "user.id": "user_id",  # the artifact's user_index.json token; OOV for users it does not list
}
# Sources a next_item model may read (one row per user, no candidate): two-tower user towers.
USER_SOURCES = frozenset({"user.history", "user.history_events", "user.cat", "user.num"})


class FeatureInputs:
    """Feeds for (one user) x (candidate items) rows."""

    def __init__(self, manifest: Manifest, item_ids: tuple[str, ...], user_index: dict[str, int] | None = None):
        described = manifest.training.get("inputs")
        if not isinstance(described, dict):
            raise FailedPrecondition("artifact manifest lacks training.inputs (feature order per input)")
        try:
            self.encoder = FeatureEncoder.from_description(manifest.schema, described)
        except (KeyError, ValueError) as exc:
            raise FailedPrecondition(f"artifact inputs do not match its schema: {exc}") from None
        unknown = [i.source for i in manifest.inputs if i.source not in FEATURE_SOURCES]
        if unknown:
            raise FailedPrecondition(f"model inputs from {unknown} are not supported by this server")
        self.names = {i.source: i.name for i in manifest.inputs}
        # User-side inputs whose graph takes one row for every candidate (first axis "users",
        # trainer/export/ranker.py): fed once, not repeated per candidate.
        self.shared_user_rows = {i.source for i in manifest.inputs if i.shape and i.shape[0] == "users"}
        if "user.id" in self.names and user_index is None:
            raise FailedPrecondition("the model reads user ids but no user index was given")
        self.user_index = user_index or {}
        self.item_ids = item_ids
        n = len(item_ids) + FIRST_TOKEN
        enc = self.encoder
        self.item_cat = np.full((n, len(enc.item_cat)), PAD, dtype=np.int64)
        self.item_num = np.zeros((n, len(enc.item_num)), dtype=np.float32)
        self.item_multi = np.full((n, len(enc.item_multi), enc.multi_len), PAD, dtype=np.int64)
        self._lock = threading.Lock()
        self.out_of_range: Counter[str] = Counter()  # "user.age" -> values encoded as missing

    def _count_out_of_range(self, side: str, specs: tuple[FeatureSpec, ...], features: dict[str, Any]) -> None:
        for spec in specs:
            value = features.get(spec.name)
            if (
                isinstance(value, (int, float))
                and math.isfinite(value)
                and value != spec.mean
                and spec.encode_numeric(value) == 0.0
            ):
                key = f"{side}.{spec.name}"
                if not self.out_of_range[key]:
                    log.warning(
                        "%s feature %r: %.3g is too far from its mean to encode; read as missing",
                        side,
                        spec.name,
                        value,
                    )
                self.out_of_range[key] += 1

    @property
    def needs_item_features(self) -> bool:
        return any(s in self.names for s in ("item.cat", "item.num", "item.multi"))

    def load_items(
        self, fetch: Callable[[list[str]], Iterable[tuple[str, dict[str, Any] | None]]], batch: int = 1000
    ) -> int:
        """Encodes every catalogue item's features, fetched `batch` ids at a time; returns how
        many were found. Items the store does not know keep all-missing rows."""
        enc = self.encoder
        cat, num, multi = self.item_cat.copy(), self.item_num.copy(), self.item_multi.copy()
        found = 0
        for start in range(0, len(self.item_ids), batch):
            ids = list(self.item_ids[start : start + batch])
            for offset, (_, features) in enumerate(fetch(ids)):
                if features is None:
                    continue
                row = start + offset + FIRST_TOKEN
                c, v, m = enc.encode_item(features)
                self._count_out_of_range("item", enc.item_num, features)
                # reshape: with no multi-valued feature, m is [] and the row is (0, M)
                cat[row], num[row], multi[row] = c, v, np.asarray(m, dtype=np.int64).reshape(multi.shape[1:])
                found += 1
        with self._lock:  # swap whole arrays: a request sees the old rows or the new ones
            self.item_cat, self.item_num, self.item_multi = cat, num, multi
        return found

    def feeds(
        self,
        user_features: dict[str, Any],
        history: np.ndarray,
        item_tokens: np.ndarray,
        user_id: str = "",
        *,
        row_per_candidate: bool = False,
        history_events: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """Rows for the candidates item_tokens (B,) int64; history: the user's tokens, oldest
        first; history_events: their event-kind tokens, aligned (None: OOV for every event);
        user_id feeds a user.id input (unknown or empty: OOV). User-side inputs get one
        row where the graph shares it across candidates, else (or with `row_per_candidate`,
        for callers that vary them per row) B copies."""
        b = len(item_tokens)
        enc = self.encoder
        with self._lock:
            item_cat, item_num, item_multi = self.item_cat, self.item_num, self.item_multi
        out: dict[str, np.ndarray] = {}
        user_cat, user_num = enc.encode_user(user_features)
        self._count_out_of_range("user", enc.user_num, user_features)

        def rows(source: str) -> int:
            return 1 if source in self.shared_user_rows and not row_per_candidate else b

        columns = {
            "user.cat": lambda: np.tile(np.asarray(user_cat, dtype=np.int64), (rows("user.cat"), 1)),
            "user.num": lambda: np.tile(np.asarray(user_num, dtype=np.float32), (rows("user.num"), 1)),
            "item.id": lambda: item_tokens.astype(np.int64),
            "item.cat": lambda: item_cat[item_tokens],
            "item.num": lambda: item_num[item_tokens],
            "item.multi": lambda: item_multi[item_tokens],
            "user.history": lambda: np.tile(_left_pad(history, max(1, enc.history_len)), (rows("user.history"), 1)),
            "user.history_events": lambda: np.tile(
                _left_pad(
                    np.full(len(history), OOV, dtype=np.int64) if history_events is None else history_events,
                    max(1, enc.history_len),
                ),
                (rows("user.history_events"), 1),
            ),
            "user.id": lambda: np.full(rows("user.id"), self.user_index.get(user_id, OOV), dtype=np.int64),
        }
        for source, name in self.names.items():
            out[name] = columns[source]()
        return out


def _left_pad(tokens: np.ndarray, length: int) -> np.ndarray:
    out = np.full(length, PAD, dtype=np.int64)
    tail = tokens[-length:]
    if len(tail):
        out[-len(tail) :] = tail
    return out
