"""Conversions between plain Python feature values and `recsys.v1.FeatureValue`.

Plain values are what tables, stores and the schema's encoders use: `str` for categorical and
text features, `float` for numeric ones, `list[str]` for multi-valued ones, `None` for missing.
"""

from __future__ import annotations

import math
from typing import Any

from recsys.errors import InvalidArgument
from recsys.schema import FeatureKind
from recsys.v1 import types_pb2

__all__ = ["as_served", "from_proto", "from_proto_map", "to_proto", "to_proto_map"]


def to_proto(value: Any, kind: FeatureKind | None = None) -> types_pb2.FeatureValue:
    """Plain value -> FeatureValue; `kind` tells a text value from a categorical one."""
    if isinstance(value, bool):
        raise InvalidArgument(f"boolean feature values are not supported: {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise InvalidArgument(f"numeric feature value is not finite: {value!r}")
        return types_pb2.FeatureValue(number=float(value))
    if isinstance(value, str):
        if kind is FeatureKind.TEXT:
            return types_pb2.FeatureValue(text=value)
        return types_pb2.FeatureValue(category=value)
    if isinstance(value, (list, tuple)):
        return types_pb2.FeatureValue(categories=types_pb2.StringList(values=[str(v) for v in value]))
    raise InvalidArgument(f"unsupported feature value type {type(value).__name__}")


def from_proto(value: types_pb2.FeatureValue) -> str | float | list[str] | None:
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "categories":
        return list(value.categories.values)
    return getattr(value, which)


def to_proto_map(features: dict[str, Any], kinds: dict[str, FeatureKind] | None = None) -> dict[str, Any]:
    """Plain dict -> dict of FeatureValue, skipping missing (None) values."""
    kinds = kinds or {}
    return {name: to_proto(v, kinds.get(name)) for name, v in features.items() if v is not None}


def from_proto_map(features) -> dict[str, Any]:
    return {name: from_proto(v) for name, v in features.items()}


def as_served(features: dict[str, Any]) -> dict[str, Any]:
    """A stored (plain) feature row as `from_proto_map(to_proto_map(row))` gives it, without
    building the messages: numbers as floats, lists as lists of strings, missing values left out."""
    served: dict[str, Any] = {}
    for name, value in features.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            value = [str(v) for v in value]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = float(value)
        served[name] = value
    return served
