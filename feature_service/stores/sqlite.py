"""The embedded default store: one SQLite file in WAL mode, stdlib `sqlite3` only.

Tables: `users(user_id, features, updated_at, features_at)` and `items(item_id, features,
updated_at)` with features as canonical JSON, where `features_at` is when the feature row was
last written (0 for a user known only through events; NULL in rows an older release wrote,
where `updated_at` stands in); `events(user_id, item_id, ts, event_id, kind)` where the rowid is
the insertion order that breaks timestamp ties and `kind` is the event's kind (NULL or '' for
none; NULL in rows an older release wrote); `forgotten(user_id, forgotten_at)` tombstones;
`meta(key, value)`. Indexes:
`(user_id, ts)`, whose implicit rowid tail gives the newest-first history scan (and the trim of
a user's oldest events) without a sort; unique `(user_id, item_id, ts)` and unique `event_id`
(where not NULL) make duplicates free to detect, so `INSERT OR IGNORE` counts recorded events
through the row count.

Threads share one connection behind one lock. Measured against a connection per thread (WAL
lets readers run in parallel) on this project's 2-core machines, the shared connection was as
fast for gRPC-sized reads (each one is tens of microseconds, shorter than the lock hand-off),
needs no busy-timeout retries between writers, and closes in one place.
Durability: `synchronous=NORMAL` (the default) makes a commit survive a crash or SIGKILL of the
process (the WAL is written before the commit returns); `?synchronous=FULL` also survives a
power cut, at the cost of an fsync per write.
Privacy on disk: a new file is created mode 0600 (SQLite gives its -wal and -shm the file's
mode); `secure_delete` zeroes deleted content, and deleting calls (`forget_user`, `clear`)
checkpoint and truncate the WAL, so no copy of the deleted rows stays in either file.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
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

__all__ = ["SqliteStore"]

log = logging.getLogger(__name__)

SCHEME = "sqlite"
SCHEMA_VERSION = 4  # 4: events.kind
_IN_CHUNK = 500  # ids per `IN (...)` query, well under SQLite's variable limit
_SYNCHRONOUS = ("NORMAL", "FULL")
_BULK_CACHE_KIB = 256 * 1024  # page cache during bulk_load (the default is 2 MiB)
_BULK_CHECKPOINT_PAGES = 65_536  # WAL pages between checkpoints during bulk_load (default 1000)

_DDL = """
CREATE TABLE IF NOT EXISTS users (
    user_id TEXT PRIMARY KEY, features TEXT NOT NULL, updated_at INTEGER NOT NULL, features_at INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS items (
    item_id TEXT PRIMARY KEY, features TEXT NOT NULL, updated_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    user_id TEXT NOT NULL, item_id TEXT NOT NULL, ts INTEGER NOT NULL, event_id TEXT, kind TEXT
);
DROP INDEX IF EXISTS events_by_user;
CREATE INDEX IF NOT EXISTS events_by_user_time ON events(user_id, ts);
CREATE UNIQUE INDEX IF NOT EXISTS events_by_key ON events(user_id, item_id, ts);
CREATE UNIQUE INDEX IF NOT EXISTS events_by_id ON events(event_id) WHERE event_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS forgotten (
    user_id TEXT PRIMARY KEY, forgotten_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"""

# Replace a feature row only when it differs, so an unchanged row keeps its updated_at and does
# not count in the row count; given ?4 (older_than), only when its features were written before.
_PUT_USERS = """
INSERT INTO users(user_id, features, updated_at, features_at) VALUES (?1, ?2, ?3, ?3)
ON CONFLICT(user_id) DO UPDATE SET
    features = excluded.features, updated_at = excluded.updated_at, features_at = excluded.features_at
WHERE features IS NOT excluded.features AND (?4 IS NULL OR COALESCE(features_at, updated_at) < ?4)
"""
_PUT_ITEMS = """
INSERT INTO items(item_id, features, updated_at) VALUES (?1, ?2, ?3)
ON CONFLICT(item_id) DO UPDATE SET features = excluded.features, updated_at = excluded.updated_at
WHERE features IS NOT excluded.features AND (?4 IS NULL OR updated_at < ?4)
"""


class SqliteStore(Store):
    persistent = True
    # Large transactions: the per-commit costs (WAL frame headers, index page writes) are paid
    # once per batch; 200k events hold the lock ~1 s.
    event_batch = 200_000

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Callable[[], float] = time.time,
        max_events: int = MAX_EVENTS,
        synchronous: str = "NORMAL",
    ) -> None:
        super().__init__(max_events)
        if synchronous.upper() not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {', '.join(_SYNCHRONOUS)}, got {synchronous!r}")
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            _create_private(self.path)
            # Autocommit mode: transactions are opened explicitly in _write().
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
            conn.execute("PRAGMA busy_timeout=5000")  # other processes on the same file
            conn.execute("PRAGMA secure_delete=ON")  # deleted rows are zeroed, not left in free space
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version > SCHEMA_VERSION:
                conn.close()
                raise StoreUnavailable(
                    f"{self.path} has store schema version {version}; this recsys reads {SCHEMA_VERSION}"
                )
            conn.executescript(_DDL)
            if "features_at" not in {row[1] for row in conn.execute("PRAGMA table_info(users)")}:
                conn.execute("ALTER TABLE users ADD COLUMN features_at INTEGER")  # version 2 and older
            if "kind" not in {row[1] for row in conn.execute("PRAGMA table_info(events)")}:
                # Version 3 and older. Adding a nullable column rewrites nothing: old rows read NULL.
                conn.execute("ALTER TABLE events ADD COLUMN kind TEXT")
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"cannot open {self.path}: {exc}") from exc
        self._conn: sqlite3.Connection | None = conn

    @classmethod
    def from_url(cls, url: str) -> SqliteStore:
        """`sqlite:///abs/path.db` (absolute) or `sqlite://relative.db` (from the working dir).

        Options: `?max_events=N`, `?synchronous=NORMAL|FULL`.
        """
        base, options = split_options(url, {"max_events": int, "synchronous": str})
        prefix = f"{SCHEME}://"
        if not base.startswith(prefix) or not base[len(prefix) :] or "?" in base:
            raise ValueError(f"sqlite store URL needs a path: {url!r} (e.g. 'sqlite:///var/lib/recsys/features.db')")
        return cls(base[len(prefix) :], **options)

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None:
                raise StoreUnavailable(f"sqlite store {self.path} is closed")
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"{self.path}: {exc}") from exc

    @contextmanager
    def _write(self, *, erase: bool = False) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: all of the block's writes commit, or none do.

        `erase`: the block deletes personal data; then the WAL, which still holds the pages as
        they were, is checkpointed into the (zeroed) file and truncated.
        """
        with self._read() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.rollback()
                raise
            conn.commit()
            if erase:
                (busy, _, _) = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                if busy:
                    log.warning(
                        "%s: another process kept reading, so the WAL holds deleted data until its next checkpoint",
                        self.path,
                    )

    def get_users(self, user_ids: Sequence[str], max_history: int) -> list[UserRecord | None]:
        if max_history < 0:
            raise ValueError(f"max_history must be >= 0, got {max_history}")
        with self._read() as conn:
            rows = self._rows(conn, "users", "user_id", user_ids)
            histories: dict[str, tuple[list[str], list[int], list[str]]] = {}
            for uid in rows:
                recent = (
                    conn.execute(
                        "SELECT item_id, ts, kind FROM events INDEXED BY events_by_user_time"
                        " WHERE user_id = ? ORDER BY ts DESC, rowid DESC LIMIT ?",
                        (uid, max_history),
                    ).fetchall()
                    if max_history
                    else []
                )
                recent.reverse()
                histories[uid] = (
                    [item for item, _, _ in recent],
                    [ts for _, ts, _ in recent],
                    [kind or "" for _, _, kind in recent],
                )
        out: list[UserRecord | None] = []
        for uid in user_ids:
            row = rows.get(uid)
            if row is None:
                out.append(None)
            else:
                history, stamps, kinds = histories[uid]
                out.append(UserRecord(uid, row[0], list(history), list(stamps), row[1], list(kinds)))
        return out

    def get_items(self, item_ids: Sequence[str]) -> list[ItemRecord | None]:
        with self._read() as conn:
            rows = self._rows(conn, "items", "item_id", item_ids)
        return [None if (row := rows.get(iid)) is None else ItemRecord(iid, row[0], row[1]) for iid in item_ids]

    @staticmethod
    def _rows(conn: sqlite3.Connection, table: str, key: str, ids: Sequence[str]) -> dict[str, tuple[str, int]]:
        unique = list(dict.fromkeys(ids))
        found: dict[str, tuple[str, int]] = {}
        for start in range(0, len(unique), _IN_CHUNK):
            chunk = unique[start : start + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            for k, features, updated_at in conn.execute(
                f"SELECT {key}, features, updated_at FROM {table} WHERE {key} IN ({marks})", chunk
            ):
                found[k] = (features, updated_at)
        return found

    def put_users(self, rows: Iterable[tuple[str, dict[str, Any]]], *, older_than: float | None = None) -> int:
        return self._put(_PUT_USERS, rows, older_than)

    def put_items(self, rows: Iterable[tuple[str, dict[str, Any]]], *, older_than: float | None = None) -> int:
        return self._put(_PUT_ITEMS, rows, older_than)

    def _put(self, statement: str, rows: Iterable[tuple[str, dict[str, Any]]], older_than: float | None) -> int:
        now = int(self._clock())
        encoded = [(k, features_json(features), now, older_than) for k, features in rows]
        if not encoded:
            return 0
        with self._write() as conn:
            return conn.executemany(statement, encoded).rowcount

    def count_users(self) -> int:
        with self._read() as conn:
            return conn.execute("SELECT COUNT(*) FROM users").fetchone()[0]

    def count_items(self) -> int:
        with self._read() as conn:
            return conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]

    def append_events(self, events: Sequence[Event]) -> tuple[int, int]:
        rows = [(e.user_id, e.item_id, e.timestamp, e.event_id or None, e.kind or None) for e in events]
        insert = "INSERT OR IGNORE INTO events(user_id, item_id, ts, event_id, kind) VALUES (?, ?, ?, ?, ?)"
        return self._append(insert, rows, [e.user_id for e in events])

    def append_event_columns(
        self,
        user_ids: Sequence[str],
        item_ids: Sequence[str],
        timestamps: Sequence[int],
        kinds: Sequence[str] | None = None,
    ) -> tuple[int, int]:
        if not len(user_ids) == len(item_ids) == len(timestamps) == (len(user_ids) if kinds is None else len(kinds)):
            raise ValueError("user_ids, item_ids, timestamps and kinds must have the same length")
        if kinds is None:  # no kinds: the columns as before, kind left NULL
            rows: Iterable[tuple] = zip(user_ids, item_ids, timestamps)  # tuples made in C, consumed by executemany
            return self._append("INSERT OR IGNORE INTO events(user_id, item_id, ts) VALUES (?, ?, ?)", rows, user_ids)
        rows = zip(user_ids, item_ids, timestamps, kinds)  # "" is stored as is and reads as no kind
        return self._append(
            "INSERT OR IGNORE INTO events(user_id, item_id, ts, kind) VALUES (?, ?, ?, ?)", rows, user_ids
        )

    def _append(self, insert: str, rows: Iterable[tuple], user_ids: Sequence[str]) -> tuple[int, int]:
        if not len(user_ids):
            return 0, 0
        now = int(self._clock())
        with self._write() as conn:
            # Rowids grow from the current maximum, so rows above it are exactly this batch's.
            (before,) = conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM events").fetchone()
            recorded = conn.executemany(insert, rows).rowcount
            if recorded == len(user_ids):  # every event is new: every user of the batch gained one
                touched = list(dict.fromkeys(user_ids))
            elif recorded:
                # A rowid range scan, deduplicated here: cheaper than DISTINCT's temporary b-tree.
                new = conn.execute("SELECT user_id FROM events WHERE rowid > ?", (before,))
                touched = list(dict.fromkeys(uid for (uid,) in new))
            else:
                touched = []
            if touched:
                conn.executemany(
                    "INSERT INTO users(user_id, features, updated_at, features_at) VALUES (?, '{}', ?, 0)"
                    " ON CONFLICT(user_id) DO UPDATE SET updated_at = excluded.updated_at",
                    [(uid, now) for uid in touched],
                )
                # Keep each user's newest max_events (the same order as the history scan).
                conn.executemany(
                    "DELETE FROM events WHERE rowid IN (SELECT rowid FROM events INDEXED BY events_by_user_time"
                    " WHERE user_id = ? ORDER BY ts DESC, rowid DESC LIMIT -1 OFFSET ?)",
                    [(uid, self.max_events) for uid in touched],
                )
        return recorded, len(user_ids) - recorded

    @contextmanager
    def bulk_load(self) -> Iterator[None]:
        """A bigger page cache and fewer WAL checkpoints while loading: the event indexes of a
        large load stay in memory instead of being re-read for every batch, and a page changed
        by many batches is copied back to the database once per checkpoint, not once per batch.
        Durability is unchanged: each commit is in the WAL as before (same synchronous)."""
        with self._read() as conn:
            (cache,) = conn.execute("PRAGMA cache_size").fetchone()
            (checkpoint,) = conn.execute("PRAGMA wal_autocheckpoint").fetchone()
            conn.execute(f"PRAGMA cache_size=-{_BULK_CACHE_KIB}")
            conn.execute(f"PRAGMA wal_autocheckpoint={_BULK_CHECKPOINT_PAGES}")
        try:
            yield
        finally:
            with self._lock:
                if self._conn is not None:
                    self._conn.execute(f"PRAGMA cache_size={int(cache)}")
                    self._conn.execute(f"PRAGMA wal_autocheckpoint={int(checkpoint)}")
                    # Leave a small WAL behind, not one the size of the load's last stretch.
                    self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()

    def forget_user(self, user_id: str) -> bool:
        now = int(self._clock())
        with self._write(erase=True) as conn:
            held = conn.execute("DELETE FROM users WHERE user_id = ?", (user_id,)).rowcount
            held += conn.execute("DELETE FROM events WHERE user_id = ?", (user_id,)).rowcount
            conn.execute(
                "INSERT INTO forgotten(user_id, forgotten_at) VALUES (?, ?)"
                " ON CONFLICT(user_id) DO UPDATE SET forgotten_at = excluded.forgotten_at",
                (user_id, now),
            )
        return held > 0

    def forgotten_users(self) -> dict[str, int]:
        with self._read() as conn:
            return dict(conn.execute("SELECT user_id, forgotten_at FROM forgotten").fetchall())

    def get_meta(self, key: str) -> str | None:
        with self._read() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def clear(self) -> None:
        with self._write(erase=True) as conn:
            for table in ("users", "items", "events", "forgotten", "meta"):
                conn.execute(f"DELETE FROM {table}")

    def ping(self) -> None:
        with self._read() as conn:
            conn.execute("SELECT 1").fetchone()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _create_private(path: Path) -> None:
    """Creates `path` empty with mode 0600 whatever the umask (SQLite starts a database in an
    empty file and gives its -wal and -shm the file's mode); warns when an existing file is
    readable by others, and leaves its mode, which may be the operator's choice."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o044:
            log.warning("%s is readable by other users (mode %o) and holds personal data: chmod 600 it", path, mode)
        return
    try:
        os.fchmod(fd, 0o600)  # the umask may have taken the owner's bits too
    finally:
        os.close(fd)
