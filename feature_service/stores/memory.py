"""The in-memory twin of the store contract: for tests and single-process demos, not durable.

Feature rows are kept as canonical JSON text, exactly as the SQLite backend keeps them, so the
two behave alike (tuples come back as lists, non-JSON values are refused on write, equal rows
compare equal). One lock serialises every call.
"""

from __future__ import annotations

import bisect
import json
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from feature_service.stores.base import (
    Event,
    ItemRecord,
    Store,
    StoreUnavailable,
    UserRecord,
    features_json,
)

__all__ = ["MemoryStore"]

SCHEME = "memory"


class MemoryStore(Store):
    persistent = False

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._closed = False
        self._users: dict[str, tuple[str, int]] = {}  # user_id -> (features json, updated_at)
        self._items: dict[str, tuple[str, int]] = {}
        # user_id -> sorted [(timestamp, seq, item_id)]; seq (global insertion order) breaks ties.
        self._events: dict[str, list[tuple[int, int, str]]] = {}
        self._seq = 0
        self._event_ids: set[str] = set()
        self._event_keys: set[tuple[str, str, int]] = set()
        self._meta: dict[str, str] = {}

    @classmethod
    def from_url(cls, url: str) -> MemoryStore:
        if url not in (f"{SCHEME}://", f"{SCHEME}:"):
            raise ValueError(f"memory store URL takes no path or options: {url!r} (use 'memory://')")
        return cls()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailable("memory store is closed")

    def get_users(self, user_ids: Sequence[str], max_history: int) -> list[UserRecord | None]:
        if max_history < 0:
            raise ValueError(f"max_history must be >= 0, got {max_history}")
        out: list[UserRecord | None] = []
        with self._lock:
            self._check_open()
            for uid in user_ids:
                row = self._users.get(uid)
                if row is None:
                    out.append(None)
                    continue
                recent = self._events.get(uid, [])[-max_history:] if max_history else []
                out.append(
                    UserRecord(
                        user_id=uid,
                        features=json.loads(row[0]),
                        history=[item for _, _, item in recent],
                        history_timestamps=[ts for ts, _, _ in recent],
                        updated_at=row[1],
                    )
                )
        return out

    def get_items(self, item_ids: Sequence[str]) -> list[ItemRecord | None]:
        out: list[ItemRecord | None] = []
        with self._lock:
            self._check_open()
            for iid in item_ids:
                row = self._items.get(iid)
                out.append(None if row is None else ItemRecord(iid, json.loads(row[0]), row[1]))
        return out

    def put_users(self, rows: Iterable[tuple[str, dict[str, Any]]]) -> int:
        return self._put(self._users, rows)

    def put_items(self, rows: Iterable[tuple[str, dict[str, Any]]]) -> int:
        return self._put(self._items, rows)

    def _put(self, table: dict[str, tuple[str, int]], rows: Iterable[tuple[str, dict[str, Any]]]) -> int:
        # Serialise first so that a bad row leaves the table untouched (atomic, like SQLite).
        encoded = [(key, features_json(features)) for key, features in rows]
        now = int(self._clock())
        changed = 0
        with self._lock:
            self._check_open()
            for key, text in encoded:
                old = table.get(key)
                if old is None or old[0] != text:
                    table[key] = (text, now)
                    changed += 1
        return changed

    def append_events(self, events: Sequence[Event]) -> tuple[int, int]:
        now = int(self._clock())
        recorded = 0
        with self._lock:
            self._check_open()
            for e in events:
                key = (e.user_id, e.item_id, e.timestamp)
                if key in self._event_keys or (e.event_id and e.event_id in self._event_ids):
                    continue
                self._event_keys.add(key)
                if e.event_id:
                    self._event_ids.add(e.event_id)
                self._seq += 1
                bisect.insort(self._events.setdefault(e.user_id, []), (e.timestamp, self._seq, e.item_id))
                features = self._users.get(e.user_id, ("{}", now))[0]
                self._users[e.user_id] = (features, now)
                recorded += 1
        return recorded, len(events) - recorded

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            self._check_open()
            return self._meta.get(key)

    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self._check_open()
            self._meta[key] = value

    def close(self) -> None:
        with self._lock:
            self._closed = True
