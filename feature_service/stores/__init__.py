"""Online feature stores: one name -> class table, opened by URL.

    memory://                    MemoryStore, in-process, gone on exit (tests, demos)
    sqlite:///abs/path.db        SqliteStore, one WAL-mode file (the embedded default)
    sqlite://relative.db         the same, relative to the working directory
    redis://host:6379/0          RedisStore, shared by every feature service that names it
    rediss://host:6380/0         the same over TLS

Every URL takes `?max_events=N` (events held per user, default 1000); SQLite also takes
`?synchronous=FULL`, Redis `?prefix=` and redis-py's connection options. A URL's scheme is its
key in `STORES`; the class parses the rest (`Store.from_url`).
"""

from __future__ import annotations

from feature_service.stores.base import MAX_EVENTS, Event, ItemRecord, Store, StoreUnavailable, UserRecord
from feature_service.stores.memory import MemoryStore
from feature_service.stores.redis import RedisStore
from feature_service.stores.sqlite import SqliteStore

__all__ = [
    "MAX_EVENTS",
    "STORES",
    "Event",
    "ItemRecord",
    "MemoryStore",
    "RedisStore",
    "SqliteStore",
    "Store",
    "StoreUnavailable",
    "UserRecord",
    "open_store",
]

STORES: dict[str, type[Store]] = {
    "memory": MemoryStore,
    "sqlite": SqliteStore,
    "redis": RedisStore,
    "rediss": RedisStore,
}


def open_store(url: str) -> Store:
    """Opens the store `url` names; `ValueError` for a malformed URL or an unknown scheme,
    `StoreUnavailable` when the backend cannot be reached."""
    scheme, sep, _ = url.partition("://")
    if not sep or scheme not in STORES:
        raise ValueError(
            f"unknown feature store URL {url!r}: expected one of " + ", ".join(f"{name}://..." for name in STORES)
        )
    return STORES[scheme].from_url(url)
