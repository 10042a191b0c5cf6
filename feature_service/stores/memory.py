"""The in-memory twin of the store contract: for tests and single-process demos, not durable.

Feature rows are kept as canonical JSON text, exactly as the other backends keep them, so they
behave alike (tuples come back as lists, non-JSON values are refused on write, equal rows
compare equal). One lock serialises every call.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from feature_service.stores.base import (
    MAX_EVENTS,
    Event,
    ItemRecord,
    Store,
    StoreUnavailable,
    UserRecord,
    features_json,
    split_options,
)

__all__ = ["MemoryStore"]

SCHEME = "memory"


class _History:
    """One user's held events, sorted by (timestamp, seq); seq (insertion order) breaks ties."""

    __slots__ = ("events", "keys")

    def __init__(self) -> None:
        self.events: list[tuple[int, int, str, str, str]] = []  # (timestamp, seq, item_id, event_id, kind)
        self.keys: set[tuple[str, int]] = set()  # (item_id, timestamp) of held events


class MemoryStore(Store):
    persistent = False

    def __init__(self, *, clock: Callable[[], float] = time.time, max_events: int = MAX_EVENTS) -> None:
        super().__init__(max_events)
        self._clock = clock
        self._lock = threading.Lock()
        self._closed = False
        self._users: dict[str, tuple[str, int]] = {}  # user_id -> (features json, updated_at)
        self._features_at: dict[str, int] = {}  # user_id -> when its feature row was written
        self._items: dict[str, tuple[str, int]] = {}  # item_id -> (features json, updated_at)
        self._histories: dict[str, _History] = {}
        self._event_ids: dict[str, str] = {}  # event_id -> user_id, for held events
        self._seq = 0
        self._forgotten: dict[str, int] = {}
        self._meta: dict[str, str] = {}

    @classmethod
    def from_url(cls, url: str) -> MemoryStore:
        base, options = split_options(url, {"max_events": int})
        if base not in (f"{SCHEME}://", f"{SCHEME}:"):
            raise ValueError(f"memory store URL takes no path: {url!r} (use 'memory://')")
        return cls(**options)

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
                history = self._histories.get(uid)
                recent = history.events[-max_history:] if history and max_history else []
                out.append(
                    UserRecord(
                        user_id=uid,
                        features_json=row[0],
                        history=[e[2] for e in recent],
                        history_timestamps=[e[0] for e in recent],
                        updated_at=row[1],
                        history_events=[e[4] for e in recent],
                    )
                )
        return out

    def get_items(self, item_ids: Sequence[str]) -> list[ItemRecord | None]:
        out: list[ItemRecord | None] = []
        with self._lock:
            self._check_open()
            for iid in item_ids:
                row = self._items.get(iid)
                out.append(None if row is None else ItemRecord(iid, row[0], row[1]))
        return out

    def put_users(self, rows: Iterable[tuple[str, dict[str, Any]]], *, older_than: float | None = None) -> int:
        return self._put(self._users, rows, older_than, self._features_at)

    def put_items(self, rows: Iterable[tuple[str, dict[str, Any]]], *, older_than: float | None = None) -> int:
        return self._put(self._items, rows, older_than, None)

    def _put(
        self,
        table: dict[str, tuple[str, int]],
        rows: Iterable[tuple[str, dict[str, Any]]],
        older_than: float | None,
        features_at: dict[str, int] | None,  # None: the table's updated_at is the feature-write time
    ) -> int:
        # Serialise first so that a bad row leaves the table untouched (atomic, like SQLite).
        encoded = [(key, features_json(features)) for key, features in rows]
        now = int(self._clock())
        changed = 0
        with self._lock:
            self._check_open()
            for key, text in encoded:
                old = table.get(key)
                if old is not None:
                    if old[0] == text:
                        continue
                    written = old[1] if features_at is None else features_at.get(key, 0)
                    if older_than is not None and written >= older_than:
                        continue
                table[key] = (text, now)
                if features_at is not None:
                    features_at[key] = now
                changed += 1
        return changed

    def count_users(self) -> int:
        with self._lock:
            self._check_open()
            return len(self._users)

    def count_items(self) -> int:
        with self._lock:
            self._check_open()
            return len(self._items)

    def append_events(self, events: Sequence[Event]) -> tuple[int, int]:
        now = int(self._clock())
        recorded = 0
        touched: set[str] = set()
        with self._lock:
            self._check_open()
            for e in events:
                history = self._histories.setdefault(e.user_id, _History())
                key = (e.item_id, e.timestamp)
                if key in history.keys or (e.event_id and e.event_id in self._event_ids):
                    continue
                history.keys.add(key)
                if e.event_id:
                    self._event_ids[e.event_id] = e.user_id
                self._seq += 1
                bisect.insort(history.events, (e.timestamp, self._seq, e.item_id, e.event_id, e.kind))
                touched.add(e.user_id)
                recorded += 1
            for uid in touched:
                self._users[uid] = (self._users.get(uid, ("{}", now))[0], now)
                self._trim(self._histories[uid])
        return recorded, len(events) - recorded

    def _trim(self, history: _History) -> None:
        excess = len(history.events) - self.max_events
        if excess <= 0:
            return
        for ts, _, item, event_id, _ in history.events[:excess]:
            history.keys.discard((item, ts))
            self._event_ids.pop(event_id, None)
        del history.events[:excess]

    def forget_user(self, user_id: str) -> bool:
        now = int(self._clock())
        with self._lock:
            self._check_open()
            held = self._users.pop(user_id, None) is not None
            self._features_at.pop(user_id, None)
            history = self._histories.pop(user_id, None)
            if history is not None:
                held = held or bool(history.events)
                for event in history.events:
                    self._event_ids.pop(event[3], None)
            self._forgotten[user_id] = now
        return held

    def forgotten_users(self) -> dict[str, int]:
        with self._lock:
            self._check_open()
            return dict(self._forgotten)

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            self._check_open()
            return self._meta.get(key)

    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self._check_open()
            self._meta[key] = value

    def clear(self) -> None:
        with self._lock:
            self._check_open()
            for table in (self._users, self._features_at, self._items, self._forgotten, self._meta):
                table.clear()
            self._histories.clear()
            self._event_ids.clear()

    def ping(self) -> None:
        with self._lock:
            self._check_open()

    def close(self) -> None:
        with self._lock:
            self._closed = True
