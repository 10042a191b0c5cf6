"""Typed configuration: frozen dataclasses filled from defaults < file < environment < flags.

A config file is TOML or JSON holding the dataclass's field names (unknown names are an error,
so typos do not pass silently). Environment variables are `<PREFIX><FIELD>` in upper case,
e.g. `RECSYS_TRAIN_EPOCHS=5`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["load_config"]

T = TypeVar("T")


def _coerce(value: Any, default: Any, name: str) -> Any:
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"config field {name!r}: expected a boolean, got {value!r}")
    if isinstance(default, int):
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ValueError(f"config field {name!r}: expected an integer, got {value!r}") from None
    if isinstance(default, float):
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"config field {name!r}: expected a number, got {value!r}") from None
    if default is None:  # an optional field: numbers from text where they parse, else as given
        if isinstance(value, str):
            try:
                return json.loads(value)
            except json.JSONDecodeError:
                return value
        return value
    if isinstance(default, tuple) and isinstance(value, str):  # a list as text (environment)
        if not value.lstrip().startswith("["):  # comma-separated names: purchase,cart
            return tuple(part.strip() for part in value.split(",") if part.strip())
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"config field {name!r}: expected a JSON list, got {value!r}") from None
        if not isinstance(value, list):
            raise ValueError(f"config field {name!r}: expected a JSON list, got {value!r}")
    return value if isinstance(value, type(default)) else type(default)(value)


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    text = path.read_text()
    if path.suffix == ".toml":
        return tomllib.loads(text)
    if path.suffix == ".json":
        return json.loads(text)
    raise ValueError(f"config file {path}: use .toml or .json")


def load_config(
    cls: type[T],
    *,
    file: str | Path | None = None,
    env_prefix: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> T:
    """Builds `cls` from its defaults, then the file, the environment and `overrides` (None = unset)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    defaults = cls()
    values: dict[str, Any] = {}
    layers: list[tuple[str, dict[str, Any]]] = []
    if file:
        layers.append((str(file), read_config_file(file)))
    if env_prefix:
        env = {
            name: os.environ[f"{env_prefix}{name.upper()}"]
            for name in fields
            if f"{env_prefix}{name.upper()}" in os.environ
        }
        layers.append(("environment", env))
    if overrides:
        layers.append(("flags", {k: v for k, v in overrides.items() if v is not None}))
    for origin, layer in layers:
        unknown = sorted(set(layer) - set(fields))
        if unknown:
            raise ValueError(f"{origin}: unknown config field(s) {', '.join(unknown)}; known: {', '.join(fields)}")
        for name, value in layer.items():
            values[name] = _coerce(value, getattr(defaults, name), name)
    return dataclasses.replace(defaults, **values)
