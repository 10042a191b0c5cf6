"""Online feature stores: one name -> class table, opened by URL.

    memory://                 MemoryStore, in-process, gone on exit (tests, demos)
    sqlite:///abs/path.db     SqliteStore, one WAL-mode file (the embedded default)
    sqlite://relative.db      the same, relative to the working directory

A URL's scheme is its key in `STORES`; the class parses the rest (`Store.from_url`).
"""

from __future__ import annotations

from feature_service.stores.base import Event, ItemRecord, Store, StoreUnavailable, UserRecord
from feature_service.stores.memory import MemoryStore
from feature_service.stores.sqlite import SqliteStore

__all__ = [
    "STORES",
    "Event",
    "ItemRecord",
    "MemoryStore",
    "SqliteStore",
    "Store",
    "StoreUnavailable",
    "UserRecord",
    "open_store",
]

STORES: dict[str, type[Store]] = {"memory": MemoryStore, "sqlite": SqliteStore}


def open_store(url: str) -> Store:
    """Opens the store `url` names; `ValueError` for a malformed URL or an unknown scheme."""
    scheme, sep, _ = url.partition("://")
    if not sep or scheme not in STORES:
        raise ValueError(
            f"unknown feature store URL {url!r}: expected one of "
            + ", ".join(f"{name}://..." for name in STORES)
        )
    return STORES[scheme].from_url(url)
