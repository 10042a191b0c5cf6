"""The online feature store contract: a tiny ABC that every backend implements the same way.

Every backend (memory, SQLite, later Redis) passes the one contract suite in
tests/feature_service/test_store_contract.py. The rules it checks:

- **Lookups answer in request order**, one entry per requested id (duplicates included), with
  `None` for an unknown id. A user that exists only through events is found, with features `{}`.
- **History** is a user's events ordered by timestamp, ties by insertion order (an event recorded
  later with an older timestamp is placed by its timestamp), oldest first; `get_users` returns
  only the last `max_history` of them (`0` gives an empty history).
- **Idempotent events**: an event is a duplicate, and is neither stored nor remembered, when its
  non-empty `event_id` was already stored, or when an event with the same
  `(user_id, item_id, timestamp)` was. Loading the same artifact twice therefore writes nothing.
- **Feature rows are replaced, not merged**; writing a row equal to the stored one is a no-op
  (not counted, `updated_at` kept). Values must be JSON-serialisable plain values.
- `updated_at` is the store clock's unix seconds at the last write that changed the entity
  (a feature row change, or a newly recorded event for users).
- Backends raise `StoreUnavailable` for their own failures (disk, network, a closed store), so
  callers map exactly one exception type; anything else is a bug and propagates as is.
- Methods are safe to call from many threads at once; a batch write is atomic.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

__all__ = ["Event", "ItemRecord", "Store", "StoreUnavailable", "UserRecord", "features_json"]


class StoreUnavailable(Exception):
    """The backend cannot serve the call (I/O error, lock timeout, lost connection, closed)."""


@dataclass(frozen=True)
class Event:
    """`user_id` interacted with `item_id` at `timestamp` (unix seconds); `event_id` optional."""

    user_id: str
    item_id: str
    timestamp: int
    event_id: str = ""


@dataclass(frozen=True)
class UserRecord:
    """A user's features and most recent events, oldest first (aligned lists)."""

    user_id: str
    features: dict[str, Any]
    history: list[str] = field(default_factory=list)
    history_timestamps: list[int] = field(default_factory=list)
    updated_at: int = 0


@dataclass(frozen=True)
class ItemRecord:
    item_id: str
    features: dict[str, Any]
    updated_at: int = 0


def features_json(features: dict[str, Any]) -> str:
    """Canonical JSON of a feature row: equal rows give equal text, so backends compare text."""
    return json.dumps(features, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class Store(ABC):
    """Users (features + event history), items (features) and a small key/value meta table."""

    # Whether data survives close() and a fresh open of the same URL.
    persistent: ClassVar[bool] = False

    @classmethod
    @abstractmethod
    def from_url(cls, url: str) -> Store:
        """Opens the store a URL names (`memory://`, `sqlite:///abs/path.db`, ...)."""

    @abstractmethod
    def get_users(self, user_ids: Sequence[str], max_history: int) -> list[UserRecord | None]:
        """One entry per id, in request order; `None` for unknown users; `max_history >= 0`."""

    @abstractmethod
    def get_items(self, item_ids: Sequence[str]) -> list[ItemRecord | None]:
        """One entry per id, in request order; `None` for unknown items."""

    @abstractmethod
    def put_users(self, rows: Iterable[tuple[str, dict[str, Any]]]) -> int:
        """Upserts `(user_id, features)` rows atomically; returns how many rows changed.

        A user's events are kept; only its feature row is replaced.
        """

    @abstractmethod
    def put_items(self, rows: Iterable[tuple[str, dict[str, Any]]]) -> int:
        """Upserts `(item_id, features)` rows atomically; returns how many rows changed."""

    @abstractmethod
    def append_events(self, events: Sequence[Event]) -> tuple[int, int]:
        """Records events atomically; returns `(recorded, duplicates)`, summing to `len(events)`.

        Duplicates within the batch count as duplicates too (the first one is recorded).
        """

    @abstractmethod
    def get_meta(self, key: str) -> str | None:
        """The value last set for `key`, or `None`."""

    @abstractmethod
    def set_meta(self, key: str, value: str) -> None:
        """Sets `key` (e.g. the schema hash of the last artifact loaded)."""

    @abstractmethod
    def close(self) -> None:
        """Releases the backend; idempotent. Later calls raise `StoreUnavailable`."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
