"""Plain feature values -> model input rows, the one implementation trainer and server share.

Everything goes through the schema's FeatureSpec encoders, so a feature-based model sees the
same numbers at serving time as in training. Column order within each input is schema order.

    user_cat / item_cat   CATEGORICAL specs -> tokens (PAD missing, OOV unseen)
    user_num / item_num   NUMERIC specs -> (value - mean) / std, missing -> 0
    item_multi            MULTI_CATEGORICAL item specs, each the first `multi_len` tokens,
                          right-padded with PAD
TEXT features and multi-valued user features are not model inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from recsys.schema import PAD, FeatureKind, FeatureSchema, FeatureSpec

__all__ = ["FeatureEncoder"]


@dataclass(frozen=True)
class FeatureEncoder:
    user_cat: tuple[FeatureSpec, ...]
    user_num: tuple[FeatureSpec, ...]
    item_cat: tuple[FeatureSpec, ...]
    item_num: tuple[FeatureSpec, ...]
    item_multi: tuple[FeatureSpec, ...]
    multi_len: int  # M: tokens kept per multi-valued feature
    history_len: int  # L: recent items read; 0 = no history input

    @classmethod
    def from_schema(cls, schema: FeatureSchema, multi_len: int, history_len: int) -> FeatureEncoder:
        def kind(specs: tuple[FeatureSpec, ...], k: FeatureKind) -> tuple[FeatureSpec, ...]:
            return tuple(s for s in specs if s.kind is k)

        return cls(
            user_cat=kind(schema.user_features, FeatureKind.CATEGORICAL),
            user_num=kind(schema.user_features, FeatureKind.NUMERIC),
            item_cat=kind(schema.item_features, FeatureKind.CATEGORICAL),
            item_num=kind(schema.item_features, FeatureKind.NUMERIC),
            item_multi=kind(schema.item_features, FeatureKind.MULTI_CATEGORICAL),
            multi_len=max(1, multi_len),
            history_len=history_len,
        )

    @classmethod
    def from_description(cls, schema: FeatureSchema, described: dict[str, Any]) -> FeatureEncoder:
        """Rebuilds the encoder an artifact recorded with `describe()`; refuses a mismatch."""
        encoder = cls.from_schema(schema, int(described["item_multi_len"]), int(described["history_len"]))
        mine = encoder.describe()
        for key in ("user_cat", "user_num", "item_cat", "item_num", "item_multi"):
            if list(described.get(key, [])) != mine[key]:
                raise ValueError(f"artifact input {key} reads {described.get(key)}, the schema gives {mine[key]}")
        return encoder

    def encode_user(self, features: dict[str, Any]) -> tuple[list[int], list[float]]:
        """{name: value} -> (cat tokens (n_user_cat,), numeric values (n_user_num,))."""
        return (
            [s.encode_category(features.get(s.name)) for s in self.user_cat],
            [s.encode_numeric(features.get(s.name)) for s in self.user_num],
        )

    def encode_item(self, features: dict[str, Any]) -> tuple[list[int], list[float], list[list[int]]]:
        """{name: value} -> (cat (n_item_cat,), numeric (n_item_num,), multi (n_item_multi, M))."""
        multi = []
        for s in self.item_multi:
            tokens = s.encode_categories(features.get(s.name))[: self.multi_len]
            multi.append(tokens + [PAD] * (self.multi_len - len(tokens)))
        return (
            [s.encode_category(features.get(s.name)) for s in self.item_cat],
            [s.encode_numeric(features.get(s.name)) for s in self.item_num],
            multi,
        )

    def describe(self) -> dict[str, Any]:
        """Feature names per input, in column order, for the manifest."""
        return {
            "user_cat": [s.name for s in self.user_cat],
            "user_num": [s.name for s in self.user_num],
            "item_cat": [s.name for s in self.item_cat],
            "item_num": [s.name for s in self.item_num],
            "item_multi": [s.name for s in self.item_multi],
            "item_multi_len": self.multi_len,
            "history_len": self.history_len,
        }
