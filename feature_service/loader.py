"""Loads an artifact's users, items and histories into a store, idempotently.

Reads `users.jsonl`, `items.jsonl` ({"user_id"|"item_id", "features": {...}}) and
`histories.jsonl` ({"user_id", "item_ids", "timestamps"}, aligned lists); a missing file loads
nothing. Every feature row is checked against the artifact's schema (known name, value of the
declared kind) before anything is written, so the store never holds a value the servers would
encode differently from the trainer. Loading the same artifact again writes nothing: unchanged
rows are skipped and events are deduplicated on (user_id, item_id, timestamp).

Events go in batches of `EVENT_BATCH`, one transaction each: a load that fails midway leaves
whole batches behind, and rerunning it completes the load without duplicates.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feature_service.stores.base import Event, Store
from recsys.artifact import HISTORIES, ITEMS, USERS, read_jsonl, read_manifest
from recsys.errors import FailedPrecondition
from recsys.schema import FeatureKind, FeatureSpec

__all__ = ["EVENT_BATCH", "LoadReport", "check_features", "load_artifact"]

log = logging.getLogger(__name__)

EVENT_BATCH = 100_000
META_SCHEMA_HASH = "artifact.schema_hash"
META_MODEL_VERSION = "artifact.model_version"


@dataclass(frozen=True)
class LoadReport:
    users_written: int  # feature rows new or changed
    items_written: int
    events_recorded: int  # new events
    duplicates: int  # events already in the store
    seconds: float

    def __str__(self) -> str:
        return (
            f"{self.users_written} users, {self.items_written} items, {self.events_recorded} events "
            f"written ({self.duplicates} duplicate events skipped) in {self.seconds:.2f} s"
        )


def check_features(features: Any, specs: dict[str, FeatureSpec], where: str) -> dict[str, Any]:
    """Returns `features` if every value matches its spec's kind; `FailedPrecondition` otherwise.

    Missing values (absent or `None`) are allowed; names outside the schema are not.
    """
    if not isinstance(features, dict):
        raise FailedPrecondition(f"{where}: features must be an object, got {type(features).__name__}")
    for name, value in features.items():
        spec = specs.get(name)
        if spec is None:
            raise FailedPrecondition(f"{where}: feature {name!r} is not in the schema")
        if value is None or _fits(value, spec.kind):
            continue
        raise FailedPrecondition(f"{where}: feature {name!r} is {spec.kind.value}, got {value!r}")
    return features


def _fits(value: Any, kind: FeatureKind) -> bool:
    if kind is FeatureKind.NUMERIC:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind is FeatureKind.MULTI_CATEGORICAL:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return isinstance(value, str)  # CATEGORICAL, TEXT


def _feature_rows(path: Path, key: str, specs: dict[str, FeatureSpec]) -> list[tuple[str, dict[str, Any]]]:
    rows = []
    for line, row in enumerate(read_jsonl(path), 1):
        where = f"{path.name} line {line}"
        entity = row.get(key)
        if not isinstance(entity, str) or not entity:
            raise FailedPrecondition(f"{where}: {key!r} is missing or empty")
        rows.append((entity, check_features(row.get("features", {}), specs, where)))
    return rows


def _events(path: Path) -> Iterator[Event]:
    for line, row in enumerate(read_jsonl(path), 1):
        where = f"{path.name} line {line}"
        user_id, items, stamps = row.get("user_id"), row.get("item_ids"), row.get("timestamps")
        if not isinstance(user_id, str) or not user_id:
            raise FailedPrecondition(f"{where}: 'user_id' is missing or empty")
        if not isinstance(items, list) or not isinstance(stamps, list) or len(items) != len(stamps):
            raise FailedPrecondition(f"{where}: 'item_ids' and 'timestamps' must be lists of equal length")
        for item, ts in zip(items, stamps):
            if not isinstance(item, str) or not item or not isinstance(ts, int) or isinstance(ts, bool):
                raise FailedPrecondition(f"{where}: bad event ({item!r}, {ts!r})")
            yield Event(user_id, item, ts)


def load_artifact(store: Store, artifact_dir: str | Path) -> LoadReport:
    """Writes the artifact's feature rows and histories into `store`; see the module docstring.

    Feature files are checked in full before the first write. Records the artifact's schema
    hash and model version in the store's meta table.
    """
    start = time.perf_counter()
    artifact_dir = Path(artifact_dir)
    manifest = read_manifest(artifact_dir)
    schema = manifest.schema
    users = _feature_rows(artifact_dir / USERS, "user_id", {s.name: s for s in schema.user_features})
    items = _feature_rows(artifact_dir / ITEMS, "item_id", {s.name: s for s in schema.item_features})

    previous = store.get_meta(META_SCHEMA_HASH)
    if previous is not None and previous != schema.hash:
        log.warning("store held schema %s; loading artifact with schema %s", previous, schema.hash)
    users_written = store.put_users(users)
    items_written = store.put_items(items)
    recorded = duplicates = 0
    batch: list[Event] = []
    for event in _events(artifact_dir / HISTORIES):
        batch.append(event)
        if len(batch) >= EVENT_BATCH:
            r, d = store.append_events(batch)
            recorded, duplicates, batch = recorded + r, duplicates + d, []
    r, d = store.append_events(batch)
    store.set_meta(META_SCHEMA_HASH, schema.hash)
    store.set_meta(META_MODEL_VERSION, manifest.model_version)
    return LoadReport(users_written, items_written, recorded + r, duplicates + d, time.perf_counter() - start)
