"""Loads an artifact's users, items and histories into a store, idempotently.

Reads `users.jsonl`, `items.jsonl` ({"user_id"|"item_id", "features": {...}}) and
`histories.jsonl` ({"user_id", "item_ids", "timestamps"}, aligned lists); a missing file loads
nothing. Every feature row is checked against the artifact's schema (known name, value of the
declared kind) before anything is written, so the store never holds a value the servers would
encode differently from the trainer. Loading the same artifact again writes nothing: unchanged
rows are skipped and events are deduplicated on (user_id, item_id, timestamp).

Events go in batches of `EVENT_BATCH`, one transaction each: a load that fails midway leaves
whole batches behind, and rerunning it completes the load without duplicates.

Users the store has forgotten (tombstones, see `Store.forget_user`) are skipped, features and
events alike, so reloading an artifact exported before a user asked to be forgotten does not
bring the user back. The store's meta table records the artifact's schema (JSON and hash) and
model version: `recsys serve features --store URL` without `--artifact` serves that schema.
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
from recsys.errors import FailedPrecondition, RecsysError
from recsys.schema import FeatureKind, FeatureSchema, FeatureSpec

__all__ = [
    "EVENT_BATCH",
    "META_MODEL_VERSION",
    "META_SCHEMA_HASH",
    "META_SCHEMA_JSON",
    "LoadReport",
    "check_features",
    "load_artifact",
    "stored_schema",
]

log = logging.getLogger(__name__)

EVENT_BATCH = 100_000
META_SCHEMA_HASH = "artifact.schema_hash"
META_MODEL_VERSION = "artifact.model_version"
META_SCHEMA_JSON = "artifact.schema_json"


@dataclass(frozen=True)
class LoadReport:
    users_written: int  # feature rows new or changed
    items_written: int
    events_recorded: int  # new events
    duplicates: int  # events already in the store
    seconds: float
    forgotten_skipped: int = 0  # users of the artifact the store has forgotten

    def __str__(self) -> str:
        skipped = f", {self.forgotten_skipped} forgotten users skipped" if self.forgotten_skipped else ""
        return (
            f"{self.users_written} users, {self.items_written} items, {self.events_recorded} events "
            f"written ({self.duplicates} duplicate events skipped{skipped}) in {self.seconds:.2f} s"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "users_written": self.users_written,
            "items_written": self.items_written,
            "events_recorded": self.events_recorded,
            "duplicates": self.duplicates,
            "forgotten_skipped": self.forgotten_skipped,
            "seconds": round(self.seconds, 3),
        }


def check_features(
    features: Any, specs: dict[str, FeatureSpec], where: str, error: type[RecsysError] = FailedPrecondition
) -> dict[str, Any]:
    """Returns `features` if every value matches its spec's kind; raises `error` otherwise.

    Missing values (absent or `None`) are allowed; names outside the schema are not.
    """
    if not isinstance(features, dict):
        raise error(f"{where}: features must be an object, got {type(features).__name__}")
    for name, value in features.items():
        spec = specs.get(name)
        if spec is None:
            raise error(f"{where}: feature {_short(name)} is not in the schema")
        if value is None or _fits(value, spec.kind):
            continue
        raise error(f"{where}: feature {_short(name)} is {spec.kind.value}, got {_short(value)}")
    return features


def _short(value: Any, limit: int = 60) -> str:
    """repr of a client's value for an error message, cut to about `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


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


def _events(path: Path, max_events: int) -> Iterator[Event]:
    """Each user's newest `max_events` events (what the store would keep): a reload of a long
    history then finds only duplicates instead of re-adding events the bound drops again."""
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
        order = sorted(range(len(items)), key=stamps.__getitem__)[-max_events:]  # stable: ties keep file order
        for i in order:
            yield Event(user_id, items[i], stamps[i])


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
    forgotten = store.forgotten_users()
    skipped = {uid for uid, _ in users if uid in forgotten}
    users_written = store.put_users([(uid, f) for uid, f in users if uid not in forgotten])
    items_written = store.put_items(items)
    recorded = duplicates = 0
    batch: list[Event] = []
    for event in _events(artifact_dir / HISTORIES, store.max_events):
        if event.user_id in forgotten:
            skipped.add(event.user_id)
            continue
        batch.append(event)
        if len(batch) >= EVENT_BATCH:
            r, d = store.append_events(batch)
            recorded, duplicates, batch = recorded + r, duplicates + d, []
    r, d = store.append_events(batch)
    store.set_meta(META_SCHEMA_JSON, schema.to_json())
    store.set_meta(META_SCHEMA_HASH, schema.hash)
    store.set_meta(META_MODEL_VERSION, manifest.model_version)
    return LoadReport(
        users_written, items_written, recorded + r, duplicates + d, time.perf_counter() - start, len(skipped)
    )


def stored_schema(store: Store) -> FeatureSchema:
    """The schema of the last artifact loaded into `store`; `FailedPrecondition` if none was."""
    text = store.get_meta(META_SCHEMA_JSON)
    if text is None:
        raise FailedPrecondition(
            "the feature store holds no artifact: load one first (recsys features load --artifact DIR --store URL)"
        )
    schema = FeatureSchema.from_json(text)
    if schema.hash != store.get_meta(META_SCHEMA_HASH):
        raise FailedPrecondition("the feature store's schema does not match its recorded hash: reload the artifact")
    return schema
