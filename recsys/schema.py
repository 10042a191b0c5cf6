"""Feature schemas: the model's encoding (`FeatureSchema`) and the store's raw contract
(`FeatureContract`).

A `FeatureSchema` belongs to one model version: feature kinds plus the encoding learnt in
training (vocabularies, normalisation statistics, item index checksum). A `FeatureContract` is
what the feature store serves: feature names and kinds only, under which raw values are kept.
A model is compatible with a store when every raw feature it reads is served with the kind it
expects (`FeatureContract.problems`); new items, users, vocabulary entries and added features
never break a model. The evolution rules (docs/feature-store.md): adding a feature is free,
removing one is refused while a model needs it, and a feature's kind never changes (a new kind
is a new name).

Vocabularies reserve two slots: index 0 is padding and index 1 is out-of-vocabulary; real
values start at 2. The item vocabulary follows the same rule, so the model's item token for
column `j` of its `scores` output is `j + FIRST_TOKEN`.

Numeric features are stored and served raw; `encode_numeric` normalises them with the mean and
standard deviation recorded here, so trainer and servers cannot disagree on the transform.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = [
    "FIRST_TOKEN",
    "OOV",
    "PAD",
    "FeatureContract",
    "FeatureKind",
    "FeatureSchema",
    "FeatureSpec",
    "canonical_json",
    "sha256_hex",
]

PAD = 0
OOV = 1
FIRST_TOKEN = 2

FeatureValue = str | float | list[str]


class FeatureKind(StrEnum):
    CATEGORICAL = "categorical"  # one string value, e.g. gender
    NUMERIC = "numeric"  # one float, e.g. age
    MULTI_CATEGORICAL = "multi_categorical"  # list of strings, e.g. genres ("Action|Comedy")
    TEXT = "text"  # free text, e.g. title; served, not encoded


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no spaces: equal objects give equal bytes, hence equal hashes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_hex(data: str | bytes) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


@dataclass(frozen=True)
class FeatureSpec:
    """One column of a user or item table."""

    name: str
    kind: FeatureKind
    # Categorical kinds: the known values; value v encodes as vocabulary.index(v) + FIRST_TOKEN.
    vocabulary: tuple[str, ...] = ()
    # Numeric: training-set statistics used by encode_numeric; missing values encode as 0.
    mean: float = 0.0
    std: float = 1.0

    def encode_category(self, value: str | None) -> int:
        """Token of one categorical value: PAD for missing, OOV for unseen values."""
        if value is None or value == "":
            return PAD
        index = self._lookup().get(value)
        return OOV if index is None else index

    def encode_categories(self, values: list[str] | None) -> list[int]:
        return [self.encode_category(v) for v in (values or [])]

    def encode_numeric(self, value: float | None, limit: float = 1e6) -> float:
        """(value - mean) / std; missing or non-finite values encode as 0 (the mean), and so do
        values more than `limit` standard deviations from the mean: a unit or data error, not a
        measurement, and one that would overflow float32 inside the model (NaN scores)."""
        if value is None or not math.isfinite(value):
            return 0.0
        z = (float(value) - self.mean) / (self.std or 1.0)
        return z if abs(z) <= limit else 0.0  # abs(inf) and abs(nan) fail the test too

    def _lookup(self) -> dict[str, int]:
        cached = self.__dict__.get("_lookup_cache")
        if cached is None:
            cached = {v: i + FIRST_TOKEN for i, v in enumerate(self.vocabulary)}
            object.__setattr__(self, "_lookup_cache", cached)
        return cached

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "kind": self.kind.value}
        if self.kind in (FeatureKind.CATEGORICAL, FeatureKind.MULTI_CATEGORICAL):
            d["vocabulary"] = list(self.vocabulary)
        if self.kind is FeatureKind.NUMERIC:
            d["mean"], d["std"] = self.mean, self.std
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSpec:
        return cls(
            name=d["name"],
            kind=FeatureKind(d["kind"]),
            vocabulary=tuple(d.get("vocabulary", ())),
            mean=float(d.get("mean", 0.0)),
            std=float(d.get("std", 1.0)),
        )


class _Hashed:
    """`to_json` (canonical) and `hash` (its sha256, 16 hex digits) of a `to_dict` value."""

    def to_json(self) -> str:
        return canonical_json(self.to_dict())

    @property
    def hash(self) -> str:
        return sha256_hex(self.to_json())[:16]


@dataclass(frozen=True)
class FeatureSchema(_Hashed):
    """Everything a consumer needs to turn served features into model inputs."""

    user_features: tuple[FeatureSpec, ...] = ()
    item_features: tuple[FeatureSpec, ...] = ()
    # Most recent events of a user's history the model reads.
    max_history: int = 50
    # sha256 of the item index (ids in model column order): the item vocabulary's version.
    item_index_sha256: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def user_spec(self, name: str) -> FeatureSpec | None:
        return next((s for s in self.user_features if s.name == name), None)

    def item_spec(self, name: str) -> FeatureSpec | None:
        return next((s for s in self.item_features if s.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "user_features": [s.to_dict() for s in self.user_features],
            "item_features": [s.to_dict() for s in self.item_features],
            "max_history": self.max_history,
            "item_index_sha256": self.item_index_sha256,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSchema:
        return cls(
            user_features=tuple(FeatureSpec.from_dict(s) for s in d.get("user_features", [])),
            item_features=tuple(FeatureSpec.from_dict(s) for s in d.get("item_features", [])),
            max_history=int(d.get("max_history", 50)),
            item_index_sha256=d.get("item_index_sha256", ""),
            extra=dict(d.get("extra", {})),
        )

    @classmethod
    def from_json(cls, text: str) -> FeatureSchema:
        return cls.from_dict(json.loads(text))

    def contract(self) -> FeatureContract:
        """The raw features of this schema: names and kinds, no encoding."""
        return FeatureContract(
            user={s.name: s.kind for s in self.user_features},
            item={s.name: s.kind for s in self.item_features},
            max_history=self.max_history,
        )


SIDES = ("user", "item")


@dataclass(frozen=True)
class FeatureContract(_Hashed):
    """Raw features by side (`user`, `item`): name -> kind. What a store serves, or what a
    model needs. `max_history` is the service's default history length (the largest loaded)."""

    user: dict[str, FeatureKind] = field(default_factory=dict)
    item: dict[str, FeatureKind] = field(default_factory=dict)
    max_history: int = 50

    def side(self, side: str) -> dict[str, FeatureKind]:
        if side not in SIDES:
            raise ValueError(f"feature side must be one of {SIDES}, got {side!r}")
        return self.user if side == "user" else self.item

    def problems(self, needs: FeatureContract) -> list[str]:
        """Why a model needing `needs` cannot read features served under this contract; []
        when it can. Extra features here are fine; missing or retyped ones are not."""
        out = []
        for side in SIDES:
            served = self.side(side)
            for name, kind in sorted(needs.side(side).items()):
                have = served.get(name)
                if have is None:
                    out.append(f"{side} feature {name!r} ({kind.value}) is not served")
                elif have is not kind:
                    out.append(f"{side} feature {name!r} is served as {have.value}, the model reads {kind.value}")
        return out

    def merged(self, other: FeatureContract) -> FeatureContract:
        """This contract plus `other`'s features; ValueError if one name changes kind."""
        sides = {}
        for side in SIDES:
            mine, theirs = dict(self.side(side)), other.side(side)
            for name, kind in theirs.items():
                if mine.get(name, kind) is not kind:
                    raise ValueError(
                        f"{side} feature {name!r} is {mine[name].value} in the store and {kind.value} in the "
                        "artifact: a feature keeps its kind (give the new kind a new name)"
                    )
                mine[name] = kind
            sides[side] = mine
        return FeatureContract(sides["user"], sides["item"], max(self.max_history, other.max_history))

    def without(self, side: str, name: str) -> FeatureContract:
        sides = {s: dict(self.side(s)) for s in SIDES}
        sides[side].pop(name, None)
        return FeatureContract(sides["user"], sides["item"], self.max_history)

    def to_dict(self) -> dict[str, Any]:
        return {
            "user_features": [{"name": n, "kind": k.value} for n, k in sorted(self.user.items())],
            "item_features": [{"name": n, "kind": k.value} for n, k in sorted(self.item.items())],
            "max_history": self.max_history,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureContract:
        def side(key: str) -> dict[str, FeatureKind]:
            return {f["name"]: FeatureKind(f["kind"]) for f in d.get(key, [])}

        return cls(side("user_features"), side("item_features"), int(d.get("max_history", 50)))

    @classmethod
    def from_json(cls, text: str) -> FeatureContract:
        return cls.from_dict(json.loads(text))
