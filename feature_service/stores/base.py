"""The online feature store contract: a tiny ABC that every backend implements the same way.

Every backend (memory, SQLite, Redis) passes the one contract suite in
tests/feature_service/test_store_contract.py. The rules it checks:

- **Lookups answer in request order**, one entry per requested id (duplicates included), with
  `None` for an unknown id. A user that exists only through events is found, with features `{}`.
- **History** is a user's events ordered by timestamp, ties by insertion order (an event recorded
  later with an older timestamp is placed by its timestamp), oldest first; `get_users` returns
  only the last `max_history` of them (`0` gives an empty history).
- **Bounded history**: a store keeps each user's newest `max_events` events (by the same order)
  and drops older ones as new ones arrive. An event older than everything a full history holds
  is accepted (counted as recorded) and dropped at once.
- **Event kinds**: an event may carry a kind (`Event.kind`, "" for none), kept with it and
  returned in `UserRecord.history_events`, aligned with `history` ("" for events recorded
  without one, including those an older release stored). A kind is not part of an event's
  identity: the duplicate rules below ignore it, so a duplicate never changes a held kind.
- **Idempotent events**: an event is a duplicate, and is neither stored nor remembered, when its
  non-empty `event_id` is held, or when an event with the same `(user_id, item_id, timestamp)`
  is. Only held events count: one dropped by the bound, or forgotten, is forgotten entirely.
  Loading the same artifact twice therefore writes nothing.
- **Feature rows are replaced, not merged**; writing a row equal to the stored one is a no-op
  (not counted, `updated_at` kept). Values must be JSON-serialisable plain values.
- `updated_at` is the store clock's unix seconds at the last write that changed the entity
  (a feature row change, or a newly recorded event for users).
- **Conditional puts**: with `older_than=T`, a put writes a row only where the store holds none
  for the id or its feature row was last written before `T` (strictly), so loading an artifact
  made at `T` never undoes a feature update acknowledged after it. Events are not feature
  writes: a user known only through events, or whose events came after its row, still takes
  the row. A row kept this way is not counted.
- **Forgetting** a user deletes its feature row, events and event ids, and records a tombstone
  (user id and time) that `forgotten_users` lists: the loader skips tombstoned users, and the
  trainer reads the list to leave them out of the next export. Events recorded for the user
  after it was forgotten are kept (the user came back); the tombstone stays.
- Backends raise `StoreUnavailable` for their own failures (disk, network, a closed store), so
  callers map exactly one exception type; anything else is a bug and propagates as is.
  `ping` raises it too, and succeeds again once the backend is back (no reopening needed).
- `clear` deletes every user, item, event, tombstone and meta key; it ends with the store
  empty (Redis clears a large store in chunks, so readers meanwhile may see part of it gone).
- Methods are safe to call from many threads at once; a batch write is atomic.
- **Bulk loads** (`append_event_columns`, inside `bulk_load()`) follow the same rules as
  `append_events`; a backend may only make them faster (bigger caches, no per-event objects),
  never weaker: each call still commits atomically and durably.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar
from urllib.parse import parse_qsl

from recsys.errors import Unavailable

__all__ = [
    "MAX_EVENTS",
    "Event",
    "ItemRecord",
    "Store",
    "StoreUnavailable",
    "UserRecord",
    "features_json",
    "split_options",
]

# Default bound on a user's held events: what the inference server asks for to exclude seen items.
MAX_EVENTS = 1000


class StoreUnavailable(Unavailable):
    """The backend cannot serve the call (I/O error, lock timeout, lost connection, closed)."""


@dataclass(frozen=True)
class Event:
    """`user_id` interacted with `item_id` at `timestamp` (unix seconds); `event_id` and `kind`
    ("view", "purchase", ...; "" for none) optional."""

    user_id: str
    item_id: str
    timestamp: int
    event_id: str = ""
    kind: str = ""


@dataclass(frozen=True)
class UserRecord:
    """A user's features and most recent events, oldest first (aligned lists: `history` item
    ids, `history_timestamps`, `history_events` kinds with "" for none).

    Features come as the stored canonical JSON text; `features` parses it on first use, so a
    server that renders the text straight to the wire (cached by text) never parses it.
    """

    user_id: str
    features_json: str
    history: list[str] = field(default_factory=list)
    history_timestamps: list[int] = field(default_factory=list)
    updated_at: int = 0
    history_events: list[str] = field(default_factory=list)

    @cached_property
    def features(self) -> dict[str, Any]:
        return json.loads(self.features_json)


@dataclass(frozen=True)
class ItemRecord:
    item_id: str
    features_json: str
    updated_at: int = 0

    @cached_property
    def features(self) -> dict[str, Any]:
        return json.loads(self.features_json)


def features_json(features: dict[str, Any]) -> str:
    """Canonical JSON of a feature row: equal rows give equal text, so backends compare text."""
    return json.dumps(features, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def split_options(url: str, known: dict[str, type]) -> tuple[str, dict[str, Any]]:
    """`"x://a?max_events=5&b=1"` -> `("x://a?b=1", {"max_events": 5})` for the `known` options.

    Options other than `known` stay in the URL (a backend's client may read them);
    `ValueError` for a known option whose value does not convert.
    """
    base, sep, query = url.partition("?")
    if not sep:
        return url, {}
    options: dict[str, Any] = {}
    rest = []
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in known:
            rest.append(f"{key}={value}")
            continue
        try:
            options[key] = known[key](value)
        except ValueError:
            raise ValueError(f"store URL option {key}={value!r} is not a valid {known[key].__name__}") from None
    return base + ("?" + "&".join(rest) if rest else ""), options


class Store(ABC):
    """Users (features + event history), items (features), tombstones and a key/value meta table."""

    # Whether data survives close() and a fresh open of the same URL.
    persistent: ClassVar[bool] = False
    # Events per append call a bulk loader sends (one transaction each): what the backend writes
    # efficiently without holding its lock too long (a Redis script of 10k events holds it ~0.2 s).
    event_batch: ClassVar[int] = 10_000

    def __init__(self, max_events: int = MAX_EVENTS) -> None:
        if max_events < 1:
            raise ValueError(f"max_events must be >= 1, got {max_events}")
        self.max_events = max_events

    @classmethod
    @abstractmethod
    def from_url(cls, url: str) -> Store:
        """Opens the store a URL names (`memory://`, `sqlite:///abs/path.db`, `redis://host:port/0`).

        Every backend takes `?max_events=N` (default `MAX_EVENTS`).
        """

    @abstractmethod
    def get_users(self, user_ids: Sequence[str], max_history: int) -> list[UserRecord | None]:
        """One entry per id, in request order; `None` for unknown users; `max_history >= 0`."""

    @abstractmethod
    def get_items(self, item_ids: Sequence[str]) -> list[ItemRecord | None]:
        """One entry per id, in request order; `None` for unknown items."""

    @abstractmethod
    def put_users(self, rows: Iterable[tuple[str, dict[str, Any]]], *, older_than: float | None = None) -> int:
        """Upserts `(user_id, features)` rows atomically; returns how many rows changed.

        A user's events are kept; only its feature row is replaced. With `older_than` (unix
        seconds), a row whose features were written at or after it is kept.
        """

    @abstractmethod
    def put_items(self, rows: Iterable[tuple[str, dict[str, Any]]], *, older_than: float | None = None) -> int:
        """Upserts `(item_id, features)` rows atomically; returns how many rows changed.

        With `older_than` (unix seconds), a row written at or after it is kept.
        """

    @abstractmethod
    def count_users(self) -> int:
        """How many users the store knows (a feature row or events; tombstones do not count)."""

    @abstractmethod
    def count_items(self) -> int:
        """How many items have a feature row."""

    @abstractmethod
    def append_events(self, events: Sequence[Event]) -> tuple[int, int]:
        """Records events atomically; returns `(recorded, duplicates)`, summing to `len(events)`.

        Duplicates within the batch count as duplicates too (the first one is recorded).
        """

    def append_event_columns(
        self,
        user_ids: Sequence[str],
        item_ids: Sequence[str],
        timestamps: Sequence[int],
        kinds: Sequence[str] | None = None,
    ) -> tuple[int, int]:
        """`append_events` for events given column-wise (aligned lists, no event ids; `kinds`
        "" for none, or None when no event has one): the bulk loader's form. Same rules and
        result; backends may override it to skip per-event objects."""
        if kinds is None:
            kinds = [""] * len(user_ids)
        return self.append_events(
            [Event(u, i, t, "", k) for u, i, t, k in zip(user_ids, item_ids, timestamps, kinds, strict=True)]
        )

    @contextmanager
    def bulk_load(self) -> Iterator[None]:
        """A block of many large writes (an artifact load): a backend may use more memory for it.
        Every write inside still commits as it would outside."""
        yield

    @abstractmethod
    def forget_user(self, user_id: str) -> bool:
        """Deletes everything held about `user_id` and records its tombstone, atomically.

        Returns whether anything was held (a feature row or events). Forgetting an unknown
        user still records the tombstone: an artifact loaded later may hold the user.
        """

    @abstractmethod
    def forgotten_users(self) -> dict[str, int]:
        """Tombstones: user id -> unix seconds it was (last) forgotten."""

    @abstractmethod
    def get_meta(self, key: str) -> str | None:
        """The value last set for `key`, or `None`."""

    @abstractmethod
    def set_meta(self, key: str, value: str) -> None:
        """Sets `key` (e.g. the schema hash of the last artifact loaded)."""

    @abstractmethod
    def clear(self) -> None:
        """Deletes every user, item, event, tombstone and meta key (a reload from scratch)."""

    @abstractmethod
    def ping(self) -> None:
        """Returns when the backend answers; `StoreUnavailable` otherwise (health checks)."""

    @abstractmethod
    def close(self) -> None:
        """Releases the backend; idempotent. Later calls raise `StoreUnavailable`."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
