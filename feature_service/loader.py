"""Loads an artifact's users, items and histories into a store, idempotently, and keeps the
store's raw feature contract.

Reads `users.jsonl`, `items.jsonl` ({"user_id"|"item_id", "features": {...}}) and
`histories.jsonl` ({"user_id", "item_ids", "timestamps"[, "events"]}, aligned lists; `events`
holds each event's kind, "" for none, and a line without it has no kinds); a missing file loads
nothing. Every feature row is checked against the artifact's schema (known name, value of the
declared kind) before anything is written. Loading the same artifact again writes nothing:
unchanged rows are skipped and events are deduplicated on (user_id, item_id, timestamp).

What a load never does:
- **undo a newer write**: a feature row changed in the store after the artifact was exported
  (`UpdateUserFeatures` after training) is kept; older rows are replaced by the artifact's;
- **mix two datasets**: when the users the store and the artifact share have histories that do
  not match (another dataset whose ids happen to overlap), the load is refused unless asked to
  `replace` the store's contents or `merge` into them;
- **bring a forgotten user back**: users the store has forgotten (tombstones, see
  `Store.forget_user`) are skipped, features and events alike.

Events go in batches of the store's `event_batch` (`EVENT_BATCH` unless the backend says
otherwise; SQLite takes 200k), one transaction each, column-wise (`Store.append_event_columns`)
inside `Store.bulk_load()`: a load that fails midway leaves whole batches behind, and rerunning
it completes the load without duplicates.

The store's meta table holds its raw feature contract (`recsys.schema.FeatureContract`): each
load adds the artifact's features to it (a feature never changes kind), and records what the
artifact's model reads, so `remove_feature` refuses to remove a feature a registered model
needs until that model is released (`release_model`).
"""

from __future__ import annotations

import calendar
import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feature_service.stores.base import Store
from recsys.artifact import HISTORIES, ITEMS, USERS, Manifest, read_jsonl, read_manifest
from recsys.errors import FailedPrecondition, RecsysError
from recsys.schema import FeatureContract, FeatureKind, FeatureSchema, canonical_json

__all__ = [
    "EVENT_BATCH",
    "LOAD_MODES",
    "MAX_KIND_CHARS",
    "META_CONTRACT",
    "META_MODEL_VERSION",
    "META_MODELS",
    "LoadReport",
    "check_event_kind",
    "check_features",
    "load_artifact",
    "release_model",
    "remove_feature",
    "stored_contract",
]

log = logging.getLogger(__name__)

EVENT_BATCH = Store.event_batch  # events per transaction unless a backend says otherwise
META_CONTRACT = "store.contract_json"  # the raw feature contract the store serves
META_MODELS = "store.models_json"  # {model_version: {"needs": contract, "loaded_at": unix s}}
META_MODEL_VERSION = "artifact.model_version"  # the last artifact loaded
META_OLD_SCHEMA = "artifact.schema_json"  # stores written by earlier recsys: the contract comes from it
# `load_artifact(mode=...)`: refuse a store holding another dataset, empty it first, or add anyway
LOAD_MODES = ("add", "replace", "merge")
# Users sampled to tell whether the store holds the artifact's dataset, and the share of their
# stored events the artifact must hold (events recorded after its export do not count).
DATASET_SAMPLE = 200
DATASET_MIN_SHARED = 0.5
FLOAT32_MAX = 3.4028234663852886e38
_STR, _INT = frozenset({str}), frozenset({int})  # the types a history's item ids / timestamps may have
# The timestamps list of a histories.jsonl line as json.dumps writes it (integers only).
_TIMESTAMPS = re.compile(rb'"timestamps":\s*\[([-0-9,\s]*)\]')
MAX_KIND_CHARS = 64  # characters of an event kind ("view", "purchase", ...)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0 and C1 control characters, DEL


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
    features: Any, kinds: dict[str, FeatureKind], where: str, error: type[RecsysError] = FailedPrecondition
) -> dict[str, Any]:
    """Returns `features` if every value matches its feature's kind; raises `error` otherwise.

    Missing values (absent or `None`) are allowed; names outside `kinds` are not. Numbers must
    be finite and within float32's range (models compute in float32).
    """
    if not isinstance(features, dict):
        raise error(f"{where}: features must be an object, got {type(features).__name__}")
    for name, value in features.items():
        kind = kinds.get(name)
        if kind is None:
            raise error(f"{where}: feature {_short(name)} is not in the schema")
        if value is None or _fits(value, kind):
            continue
        if kind is FeatureKind.NUMERIC and isinstance(value, (int, float)) and not isinstance(value, bool):
            raise error(
                f"{where}: feature {_short(name)} is {_short(value)}, beyond float32's range (±{FLOAT32_MAX:.4g})"
            )
        raise error(f"{where}: feature {_short(name)} is {kind.value}, got {_short(value)}")
    return features


def check_event_kind(kind: str) -> str | None:
    """Why `kind` cannot be an event kind (too long, a control character), or None when it can
    ("" is no kind)."""
    if len(kind) > MAX_KIND_CHARS:
        return f"is longer than {MAX_KIND_CHARS} characters"
    if _CONTROL.search(kind):
        return f"holds a control character ({_short(kind)})"
    return None


def _short(value: Any, limit: int = 60) -> str:
    """repr of a client's value for an error message, cut to about `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def _fits(value: Any, kind: FeatureKind) -> bool:
    if kind is FeatureKind.NUMERIC:
        return (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
            and abs(value) <= FLOAT32_MAX
        )
    if kind is FeatureKind.MULTI_CATEGORICAL:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return isinstance(value, str)  # CATEGORICAL, TEXT


def _feature_rows(path: Path, key: str, kinds: dict[str, FeatureKind]) -> list[tuple[str, dict[str, Any]]]:
    rows = []
    for line, row in enumerate(read_jsonl(path), 1):
        where = f"{path.name} line {line}"
        entity = row.get(key)
        if not isinstance(entity, str) or not entity:
            raise FailedPrecondition(f"{where}: {key!r} is missing or empty")
        rows.append((entity, check_features(row.get("features", {}), kinds, where)))
    return rows


class _EventColumns:
    """Events gathered column-wise for `Store.append_event_columns`."""

    __slots__ = ("item_ids", "kinds", "timestamps", "user_ids")

    def __init__(self) -> None:
        self.user_ids: list[str] = []
        self.item_ids: list[str] = []
        self.timestamps: list[int] = []
        self.kinds: list[str] | None = None  # None while no line of the batch has kinds

    def __len__(self) -> int:
        return len(self.user_ids)


# (user_id, item_ids, timestamps, kinds or None) of one histories.jsonl line
_Line = tuple[str, list[str], list[int], list[str] | None]


def _user_of(line: _Line) -> str:
    return line[0]


def _history_lines(path: Path, max_events: int) -> Iterator[_Line]:
    """(user_id, item_ids, timestamps, kinds or None) per line, checked, holding each user's
    newest `max_events` events (what the store would keep) oldest first: a reload of a long
    history then finds only duplicates instead of re-adding events the bound drops again."""
    for line, row in enumerate(read_jsonl(path), 1):
        where = f"{path.name} line {line}"
        user_id, items, stamps = row.get("user_id"), row.get("item_ids"), row.get("timestamps")
        kinds = row.get("events")
        if not isinstance(user_id, str) or not user_id:
            raise FailedPrecondition(f"{where}: 'user_id' is missing or empty")
        if not isinstance(items, list) or not isinstance(stamps, list) or len(items) != len(stamps):
            raise FailedPrecondition(f"{where}: 'item_ids' and 'timestamps' must be lists of equal length")
        # type() rather than isinstance: a bool is not a timestamp. map(type, ...) runs in C.
        if not (set(map(type, items)) <= _STR and "" not in items and set(map(type, stamps)) <= _INT):
            for item, ts in zip(items, stamps, strict=True):
                if not isinstance(item, str) or not item or not isinstance(ts, int) or isinstance(ts, bool):
                    raise FailedPrecondition(f"{where}: bad event ({item!r}, {ts!r})")
        if kinds is not None:
            _check_kinds(kinds, len(items), where)
        if len(items) > max_events or stamps != sorted(stamps):
            order = sorted(range(len(items)), key=stamps.__getitem__)[-max_events:]  # stable: ties keep file order
            items, stamps = [items[i] for i in order], [stamps[i] for i in order]
            if kinds is not None:
                kinds = [kinds[i] for i in order]
        yield user_id, items, stamps, kinds


def _check_kinds(kinds: Any, n: int, where: str) -> None:
    """`FailedPrecondition` unless `kinds` is a list of `n` valid event kinds ("" for none)."""
    if not isinstance(kinds, list) or len(kinds) != n:
        raise FailedPrecondition(f"{where}: 'events' must be a list as long as 'item_ids'")
    # One pass in C over the whole list; the per-kind loop runs only to name a bad one.
    if not kinds or (
        set(map(type, kinds)) <= _STR and max(map(len, kinds)) <= MAX_KIND_CHARS and not _CONTROL.search("".join(kinds))
    ):
        return
    for i, kind in enumerate(kinds):
        problem = f"is {_short(kind)}, not a string" if not isinstance(kind, str) else check_event_kind(kind)
        if problem is not None:
            raise FailedPrecondition(f"{where}: events[{i}] {problem}")


def count_events(path: Path) -> int:
    """How many events `histories.jsonl` holds, counted from the text without parsing it (for
    a progress total: lines not written as recsys writes them count as parsed)."""
    total = 0
    if not path.exists():
        return 0
    with open(path, "rb") as f:
        for line in f:
            match = _TIMESTAMPS.search(line)
            if match is not None:
                listed = match.group(1).strip()
                total += listed.count(b",") + 1 if listed else 0
            elif line.strip():
                stamps = json.loads(line).get("timestamps")
                total += len(stamps) if isinstance(stamps, list) else 0
    return total


def load_artifact(
    store: Store,
    artifact_dir: str | Path,
    *,
    mode: str = "add",
    progress: Callable[[int, int], None] | None = None,
) -> LoadReport:
    """Writes the artifact's feature rows and histories into `store`; see the module docstring.

    `mode`: "add" refuses a store that holds another dataset, "replace" empties the store
    first (tombstones included), "merge" adds whatever the store holds. Feature files and the
    contract are checked in full before the first write (`FailedPrecondition`). `progress`, when
    given, is called with (events done, events in the artifact) before the first batch of events
    and after each one (done counts duplicates and forgotten users' events too).
    """
    if mode not in LOAD_MODES:
        raise ValueError(f"mode must be one of {LOAD_MODES}, got {mode!r}")
    start = time.perf_counter()
    artifact_dir = Path(artifact_dir)
    manifest = read_manifest(artifact_dir)
    schema = manifest.schema
    users = _feature_rows(artifact_dir / USERS, "user_id", schema.contract().user)
    items = _feature_rows(artifact_dir / ITEMS, "item_id", schema.contract().item)
    held = None if mode == "replace" else stored_contract(store, required=False)
    try:
        contract = schema.contract() if held is None else held.merged(schema.contract())
    except ValueError as exc:
        raise FailedPrecondition(f"artifact {artifact_dir}: {exc}") from None
    if mode == "add" and held is not None:
        _check_same_dataset(store, artifact_dir)
    if mode == "replace":
        store.clear()
    # The contract first: a service reading it meanwhile accepts the new features' writes.
    store.set_meta(META_CONTRACT, contract.to_json())
    exported = _exported_at(manifest)
    forgotten = store.forgotten_users()
    skipped = {uid for uid, _ in users if uid in forgotten}
    users_written = store.put_users([(uid, f) for uid, f in users if uid not in forgotten], older_than=exported)
    items_written = store.put_items(items, older_than=exported)
    recorded, duplicates, skipped_events = _load_events(store, artifact_dir / HISTORIES, forgotten, skipped, progress)
    models = _models(store)
    models[manifest.model_version] = {"needs": manifest.needs.to_dict(), "loaded_at": int(time.time())}
    store.set_meta(META_MODELS, canonical_json(models))
    store.set_meta(META_MODEL_VERSION, manifest.model_version)
    return LoadReport(users_written, items_written, recorded, duplicates, time.perf_counter() - start, len(skipped))


def _load_events(
    store: Store, path: Path, forgotten: dict[str, int], skipped: set[str], progress: Callable[[int, int], None] | None
) -> tuple[int, int, int]:
    """Appends the histories in batches of `store.event_batch`; returns (recorded, duplicates,
    forgotten users' events left out). Users skipped are added to `skipped`."""
    total = count_events(path) if progress is not None else 0
    done = recorded = duplicates = left_out = 0
    if progress is not None:
        progress(0, total)
    lines: list[_Line] = []
    size = 0

    def flush() -> None:
        nonlocal done, recorded, duplicates, size
        # By user id (stable: one user's lines keep file order): the index pages a batch
        # touches are then visited in key order, not at random.
        lines.sort(key=_user_of)
        batch = _EventColumns()
        for user_id, items, stamps, kinds in lines:
            if kinds is not None and batch.kinds is None:  # the first kinds: earlier events have none
                batch.kinds = [""] * len(batch.user_ids)
            batch.user_ids.extend([user_id] * len(items))
            batch.item_ids.extend(items)
            batch.timestamps.extend(stamps)
            if batch.kinds is not None:
                batch.kinds.extend([""] * len(items) if kinds is None else kinds)
        columns = (batch.user_ids, batch.item_ids, batch.timestamps)
        # Without kinds the call is exactly as before kinds existed.
        r, d = (
            store.append_event_columns(*columns)
            if batch.kinds is None
            else store.append_event_columns(*columns, kinds=batch.kinds)
        )
        recorded, duplicates, done = recorded + r, duplicates + d, done + size
        lines.clear()
        size = 0
        if progress is not None:
            progress(done, max(total, done))

    with store.bulk_load():
        for line in _history_lines(path, store.max_events):
            if line[0] in forgotten:
                skipped.add(line[0])
                left_out += len(line[1])
                done += len(line[1])
                continue
            lines.append(line)
            size += len(line[1])
            if size >= store.event_batch:
                flush()
        if size:
            flush()
        elif progress is not None:
            progress(done, max(total, done))
    return recorded, duplicates, left_out


def stored_contract(store: Store, *, required: bool = True) -> FeatureContract | None:
    """The raw feature contract `store` serves; without one, `FailedPrecondition` (or None
    when not `required`). A store loaded by an earlier recsys gets it from the schema it kept."""
    text = store.get_meta(META_CONTRACT)
    if text is not None:
        return FeatureContract.from_json(text)
    old = store.get_meta(META_OLD_SCHEMA)
    if old is not None:
        return FeatureSchema.from_json(old).contract()
    if not required:
        return None
    raise FailedPrecondition(
        "the feature store holds no artifact: load one first (recsys features load --artifact DIR --store URL)"
    )


def remove_feature(store: Store, side: str, name: str) -> FeatureContract:
    """Removes a raw feature from the store's contract (values already held stay, unserved by
    the contract's checks); `FailedPrecondition` while a registered model reads it, naming
    those models. Returns the new contract."""
    contract = stored_contract(store)
    try:
        served = contract.side(side)
    except ValueError as exc:
        raise FailedPrecondition(str(exc)) from None
    if name not in served:
        raise FailedPrecondition(f"the store serves no {side} feature {name!r} (it serves {sorted(served)})")
    needing = sorted(v for v, m in _models(store).items() if name in FeatureContract.from_dict(m["needs"]).side(side))
    if needing:
        raise FailedPrecondition(
            f"{side} feature {name!r} is read by model(s) {', '.join(needing)}: serve models that do not read it, "
            "then release these (recsys features release MODEL_VERSION) and remove it again"
        )
    smaller = contract.without(side, name)
    store.set_meta(META_CONTRACT, smaller.to_json())
    return smaller


def release_model(store: Store, model_version: str) -> bool:
    """Forgets what `model_version` reads (its features may then be removed); returns whether
    it was registered."""
    models = _models(store)
    found = models.pop(model_version, None) is not None
    store.set_meta(META_MODELS, canonical_json(models))
    return found


def registered_models(store: Store) -> dict[str, FeatureContract]:
    """model_version -> the raw features it reads, for every artifact loaded and not released."""
    return {v: FeatureContract.from_dict(m["needs"]) for v, m in _models(store).items()}


def _models(store: Store) -> dict[str, Any]:
    text = store.get_meta(META_MODELS)
    return json.loads(text) if text else {}


def _exported_at(manifest: Manifest) -> float:
    """The artifact's creation time (unix seconds): store rows written later are newer. An
    artifact that does not say when it was made writes only rows the store lacks (0)."""
    try:
        return calendar.timegm(time.strptime(manifest.created_at, "%Y-%m-%dT%H:%M:%SZ"))
    except (TypeError, ValueError):
        return 0.0


def _check_same_dataset(store: Store, artifact_dir: Path) -> None:
    """Refuses an artifact whose users' histories do not match what the store holds for them.

    For up to `DATASET_SAMPLE` users the artifact shares with the store, events are compared
    where both histories cover the same time span (the store may have dropped older events and
    recorded newer ones since the export): at least `DATASET_MIN_SHARED` of the events in that
    span must be in both. Retraining on grown data passes; another dataset whose ids overlap does
    not. Histories whose spans do not overlap tell nothing and are left out.
    """
    sample: dict[str, set[tuple[str, int]]] = {}
    for row in read_jsonl(artifact_dir / HISTORIES):
        if isinstance(row.get("user_id"), str) and row.get("timestamps"):
            sample[row["user_id"]] = set(zip(row.get("item_ids", []), row["timestamps"]))
        if len(sample) >= DATASET_SAMPLE * 5:
            break
    ids = list(sample)
    shared = total = users = 0
    for start in range(0, len(ids), 1000):
        chunk = ids[start : start + 1000]
        for user_id, record in zip(chunk, store.get_users(chunk, store.max_events)):
            if record is None or not record.history:
                continue
            theirs = sample[user_id]
            mine = set(zip(record.history, record.history_timestamps))
            low = max(min(t for _, t in theirs), min(t for _, t in mine))
            high = min(max(t for _, t in theirs), max(t for _, t in mine))
            if low > high:
                continue
            theirs = {e for e in theirs if low <= e[1] <= high}
            mine = {e for e in mine if low <= e[1] <= high}
            shared += len(theirs & mine)
            total += max(len(theirs), len(mine))
            users += 1
        if users >= DATASET_SAMPLE:
            break
    if total and shared < DATASET_MIN_SHARED * total:
        raise FailedPrecondition(
            f"the store holds another dataset: for {users} users it shares with artifact {artifact_dir}, only "
            f"{shared} of {total} events over the same time span are in both. Load into an empty store, or pass "
            "--replace (empty this store first) or --merge (add to what it holds)"
        )
