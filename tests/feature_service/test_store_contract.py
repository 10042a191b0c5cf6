"""The one contract every store backend passes (see feature_service/stores/base.py).

The Redis backend runs against a real redis-server (see conftest.py): each test has a key
prefix of its own, so reopening "the same store" means the same server and prefix.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from feature_service.stores import STORES, MemoryStore, RedisStore, SqliteStore, Store, StoreUnavailable, open_store
from feature_service.stores.base import MAX_EVENTS, Event


class Clock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# name -> opens the backend's store for a test (its tmp_path, or its Redis key prefix);
# calling it again reopens the same store. Options are the constructor's (max_events).
Factory = Callable[..., Store]


def _memory(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> Factory:
    return lambda **options: MemoryStore(clock=clock, **options)


def _sqlite(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> Factory:
    return lambda **options: SqliteStore(tmp_path / "features.db", clock=clock, **options)


def _redis(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> Factory:
    url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
    return lambda **options: RedisStore.from_url(
        f"{url}?prefix={prefix}" + "".join(f"&{k}={v}" for k, v in options.items()), clock=clock
    )


FACTORIES: dict[type[Store], Callable[[pytest.FixtureRequest, Path, Clock], Factory]] = {
    MemoryStore: _memory,
    SqliteStore: _sqlite,
    RedisStore: _redis,
}
BACKENDS = {"memory": MemoryStore, "sqlite": SqliteStore, "redis": RedisStore}


def test_every_backend_has_a_factory() -> None:
    assert set(FACTORIES) == set(STORES.values()) == set(BACKENDS.values())


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def open_backend(backend: str, request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> Factory:
    return FACTORIES[BACKENDS[backend]](request, tmp_path, clock)


@pytest.fixture
def store(open_backend: Factory) -> Any:
    s = open_backend()
    yield s
    s.close()


def histories(store: Store, user_ids: list[str], max_history: int = 100) -> list[list[tuple[str, int]] | None]:
    return [
        None if r is None else list(zip(r.history, r.history_timestamps))
        for r in store.get_users(user_ids, max_history)
    ]


def test_unknown_ids_are_none_in_request_order(store: Store) -> None:
    store.put_users([("u1", {"age": 30}), ("u2", {"gender": "F"})])
    store.put_items([("i1", {"title": "A"})])
    users = store.get_users(["nope", "u2", "u1", "u2"], 10)
    assert [u and u.user_id for u in users] == [None, "u2", "u1", "u2"]
    assert users[1].features == {"gender": "F"} and users[2].features == {"age": 30}
    items = store.get_items(["i1", "i9"])
    assert items[0].features == {"title": "A"} and items[1] is None
    assert store.get_users([], 10) == [] and store.get_items([]) == []


def test_feature_rows_replace_and_unchanged_rows_are_not_writes(store: Store, clock: Clock) -> None:
    assert store.put_items([("i1", {"genres": ["Action", "Comedy"], "title": "A"}), ("i2", {})]) == 2
    clock.now = 2_000
    assert store.put_items([("i1", {"title": "A", "genres": ["Action", "Comedy"]}), ("i2", {})]) == 0
    i1, i2 = store.get_items(["i1", "i2"])
    assert i1.updated_at == 1_000 and i2.updated_at == 1_000
    assert store.put_items([("i1", {"title": "B"})]) == 1
    (i1,) = store.get_items(["i1"])
    assert i1.features == {"title": "B"} and i1.updated_at == 2_000  # replaced, not merged


@pytest.mark.parametrize("table", ["users", "items"])
def test_put_older_than_keeps_rows_written_since(store: Store, clock: Clock, table: str) -> None:
    put, get = (
        (store.put_users, lambda ids: store.get_users(ids, 0))
        if table == "users"
        else (store.put_items, store.get_items)
    )
    assert put([("before", {"v": 1}), ("same", {"v": 1})]) == 2  # at 1_000
    clock.now = 2_000
    assert put([("at", {"v": 1})]) == 1  # written at T itself: not older than T
    clock.now = 3_000
    assert put([("after", {"v": 1})]) == 1  # an acknowledged update after T
    clock.now = 4_000
    rows = [("before", {"v": 2}), ("same", {"v": 1}), ("at", {"v": 2}), ("after", {"v": 2}), ("absent", {"v": 2})]
    assert put(rows, older_than=2_000) == 2  # "before" and "absent"; "same" is unchanged
    got = {r.item_id if table == "items" else r.user_id: (r.features, r.updated_at) for r in get([k for k, _ in rows])}
    assert got == {
        "before": ({"v": 2}, 4_000),
        "same": ({"v": 1}, 1_000),
        "at": ({"v": 1}, 2_000),
        "after": ({"v": 1}, 3_000),
        "absent": ({"v": 2}, 4_000),
    }
    assert put([("after", {"v": 3})], older_than=3_500.5) == 1  # fractional times compare exactly
    assert put([("after", {"v": 4})]) == 1  # no older_than: replaces, as before
    assert get(["after"])[0].features == {"v": 4}


def test_put_older_than_looks_at_feature_writes_not_events(store: Store, clock: Clock) -> None:
    # Events move a user's updated_at but are not feature writes: a newer artifact's features
    # still reach a user that only recorded events since the old row was written.
    store.put_users([("u1", {"age": 1})])  # at 1_000
    clock.now = 3_000
    store.append_events([Event("u1", "a", 100), Event("u2", "a", 100)])  # u2 known through events only
    assert [u.updated_at for u in store.get_users(["u1", "u2"], 0)] == [3_000, 3_000]
    clock.now = 4_000
    assert store.put_users([("u1", {"age": 2}), ("u2", {"age": 3})], older_than=2_000) == 2
    assert [u.features for u in store.get_users(["u1", "u2"], 0)] == [{"age": 2}, {"age": 3}]
    # Forgotten and back through events: the old row's time is gone with it.
    store.forget_user("u1")
    store.append_events([Event("u1", "b", 200)])
    assert store.put_users([("u1", {"age": 5})], older_than=2_000) == 1


def test_non_json_features_are_refused_and_nothing_is_written(store: Store) -> None:
    with pytest.raises((TypeError, ValueError)):
        store.put_users([("u1", {"age": 1}), ("u2", {"age": float("nan")})])
    assert store.get_users(["u1", "u2"], 0) == [None, None]


def test_history_is_ordered_by_timestamp_oldest_first(store: Store) -> None:
    assert store.append_events([Event("u1", "b", 200), Event("u1", "c", 300)]) == (2, 0)
    assert store.append_events([Event("u1", "a", 100), Event("u2", "x", 50)]) == (2, 0)  # late, older
    assert histories(store, ["u1", "u2"]) == [[("a", 100), ("b", 200), ("c", 300)], [("x", 50)]]


def test_timestamp_ties_keep_insertion_order(store: Store) -> None:
    store.append_events([Event("u1", "z", 100), Event("u1", "a", 100)])
    store.append_events([Event("u1", "m", 100), Event("u1", "early", 50)])
    assert histories(store, ["u1"]) == [[("early", 50), ("z", 100), ("a", 100), ("m", 100)]]


def test_max_history_keeps_the_most_recent(store: Store) -> None:
    store.append_events([Event("u1", f"i{t}", t) for t in (5, 1, 4, 2, 3)])
    assert histories(store, ["u1"], 3) == [[("i3", 3), ("i4", 4), ("i5", 5)]]
    (user,) = store.get_users(["u1"], 0)
    assert user is not None and user.history == [] and user.history_timestamps == []
    assert [h for h, _ in histories(store, ["u1"], 50)[0]] == ["i1", "i2", "i3", "i4", "i5"]


def test_duplicate_by_event_id(store: Store) -> None:
    assert store.append_events([Event("u1", "a", 100, "e1")]) == (1, 0)
    # Same id, different content: still the same event (a client retry).
    assert store.append_events([Event("u1", "b", 200, "e1"), Event("u2", "c", 300, "e2")]) == (1, 1)
    assert store.append_events([Event("u3", "d", 1, "e3"), Event("u3", "e", 2, "e3")]) == (1, 1)  # in-batch
    assert histories(store, ["u1", "u2", "u3"]) == [[("a", 100)], [("c", 300)], [("d", 1)]]


def test_duplicate_by_user_item_timestamp(store: Store) -> None:
    events = [Event("u1", "a", 100), Event("u1", "b", 100), Event("u1", "a", 200)]
    assert store.append_events(events) == (3, 0)
    assert store.append_events(events) == (0, 3)
    assert store.append_events([Event("u1", "a", 100, "new-id"), Event("u2", "a", 100)]) == (1, 1)
    assert store.append_events([]) == (0, 0)
    assert histories(store, ["u1"]) == [[("a", 100), ("b", 100), ("a", 200)]]


def test_user_known_only_through_events_is_found(store: Store, clock: Clock) -> None:
    store.append_events([Event("u1", "a", 100)])
    (user,) = store.get_users(["u1"], 10)
    assert user is not None and user.features == {} and user.history == ["a"] and user.updated_at == 1_000
    clock.now = 2_000
    assert store.put_users([("u1", {"age": 7})]) == 1
    clock.now = 3_000
    store.append_events([Event("u1", "a", 100)])  # duplicate: not a write
    (user,) = store.get_users(["u1"], 10)
    assert user.features == {"age": 7} and user.history == ["a"] and user.updated_at == 2_000
    clock.now = 4_000
    store.append_events([Event("u1", "b", 200)])
    assert store.get_users(["u1"], 10)[0].updated_at == 4_000


def test_meta(store: Store) -> None:
    assert store.get_meta("schema_hash") is None
    store.set_meta("schema_hash", "abc")
    store.set_meta("schema_hash", "def")
    assert store.get_meta("schema_hash") == "def"


def test_closed_store_is_unavailable(store: Store) -> None:
    store.ping()
    store.close()
    store.close()  # idempotent
    for call in (
        lambda: store.get_users(["u1"], 1),
        lambda: store.get_items(["i1"]),
        lambda: store.append_events([Event("u1", "a", 1)]),
        lambda: store.put_users([("u1", {})]),
        lambda: store.forget_user("u1"),
        lambda: store.forgotten_users(),
        lambda: store.get_meta("k"),
        store.count_users,
        store.count_items,
        store.clear,
        store.ping,
    ):
        with pytest.raises(StoreUnavailable):
            call()


def test_history_is_bounded_to_the_newest_events(open_backend: Factory) -> None:
    with open_backend(max_events=3) as s:
        assert s.max_events == 3
        assert s.append_events([Event("u1", f"i{t}", t, f"e{t}") for t in (10, 20, 30, 40)]) == (4, 0)
        assert histories(s, ["u1"]) == [[("i20", 20), ("i30", 30), ("i40", 40)]]
        # Older than everything a full history holds: accepted, then dropped at once.
        assert s.append_events([Event("u1", "old", 5)]) == (1, 0)
        assert s.append_events([Event("u1", "mid", 25), Event("u2", "x", 1)]) == (2, 0)
        assert histories(s, ["u1", "u2"]) == [[("mid", 25), ("i30", 30), ("i40", 40)], [("x", 1)]]
        # Dropped events are forgotten entirely: their ids and keys are free again.
        assert s.append_events([Event("u1", "i20", 20), Event("u9", "y", 1, "e10")]) == (2, 0)
        # Held ones are still duplicates.
        assert s.append_events([Event("u1", "i40", 40), Event("u7", "z", 1, "e30")]) == (0, 2)
    with open_backend() as s:
        assert s.max_events == MAX_EVENTS
    with pytest.raises(ValueError, match="max_events must be >= 1"):
        open_backend(max_events=0)


def test_forget_user_deletes_everything_and_keeps_a_tombstone(store: Store, clock: Clock) -> None:
    store.put_users([("u1", {"age": 30}), ("u2", {"age": 40})])
    store.append_events([Event("u1", "a", 100, "e1"), Event("u1", "b", 200), Event("u2", "a", 100, "e2")])
    assert store.forgotten_users() == {}
    clock.now = 5_000
    assert store.forget_user("u1") is True
    assert store.get_users(["u1", "u2"], 10)[0] is None
    assert histories(store, ["u2"]) == [[("a", 100)]]  # other users untouched
    assert store.forgotten_users() == {"u1": 5_000}
    clock.now = 6_000
    assert store.forget_user("u1") is False  # idempotent; the tombstone moves on
    assert store.forget_user("never-seen") is False  # tombstoned all the same
    assert store.forgotten_users() == {"u1": 6_000, "never-seen": 6_000}
    # Its event ids and keys are gone too: the same events are new again (the user came back).
    assert store.append_events([Event("u1", "a", 100, "e1"), Event("u1", "b", 200)]) == (2, 0)
    assert histories(store, ["u1"]) == [[("a", 100), ("b", 200)]]
    assert store.get_users(["u1"], 0)[0].features == {}
    assert "u1" in store.forgotten_users()  # the tombstone stays for the next export


def test_clear_deletes_everything(store: Store, clock: Clock) -> None:
    assert (store.count_users(), store.count_items()) == (0, 0)
    store.put_users([("u1", {"age": 30}), ("gone", {})])
    store.put_items([("i1", {"title": "A"}), ("i2", {})])
    store.append_events([Event("u1", "a", 100, "e1"), Event("u2", "b", 200, "e2")])  # u2: events only
    store.forget_user("gone")
    store.set_meta("k", "v")
    assert (store.count_users(), store.count_items()) == (2, 2)
    store.append_events([Event(f"many{n}", "a", n, f"m{n}") for n in range(2_100)])  # Redis clears in chunks
    assert store.count_users() == 2_102
    store.clear()
    assert (store.count_users(), store.count_items()) == (0, 0)
    assert store.get_users(["u1", "u2", "gone"], 10) == [None, None, None]
    assert store.get_items(["i1", "i2"]) == [None, None]
    assert store.forgotten_users() == {} and store.get_meta("k") is None
    # Event ids and keys are free again; an older_than put finds no row to keep.
    assert store.append_events([Event("u1", "a", 100, "e1"), Event("u3", "c", 1, "e2")]) == (2, 0)
    assert histories(store, ["u1", "u3"]) == [[("a", 100)], [("c", 1)]]
    assert store.put_items([("i1", {"title": "B"})], older_than=0) == 1
    store.clear()
    store.clear()  # idempotent on an empty store
    assert (store.count_users(), store.count_items()) == (0, 0)


def test_url_options(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if backend == "redis":
        url = f"{request.getfixturevalue('redis_url')}?prefix={request.getfixturevalue('redis_prefix')}&"
    else:
        url = {"memory": "memory://?", "sqlite": f"sqlite://{tmp_path}/o.db?"}[backend]
    with open_store(f"{url}max_events=7") as s:
        assert isinstance(s, BACKENDS[backend]) and s.max_events == 7
    with pytest.raises(ValueError, match="max_events='many' is not a valid int"):
        open_store(f"{url}max_events=many")


def test_durable_across_reopen(backend: str, open_backend: Factory) -> None:
    if not BACKENDS[backend].persistent:
        pytest.skip(f"{backend} store is not persistent")
    s = open_backend()
    s.put_users([("u1", {"age": 1}), ("gone", {"age": 2})])
    s.put_items([("i1", {"title": "A"})])
    s.append_events([Event("u1", "a", 100, "e1"), Event("u1", "b", 50)])
    s.forget_user("gone")
    s.set_meta("k", "v")
    s.close()
    s = open_backend()
    try:
        assert histories(s, ["u1"]) == [[("b", 50), ("a", 100)]]
        assert s.get_users(["u1"], 0)[0].features == {"age": 1}
        assert s.get_users(["gone"], 0) == [None] and set(s.forgotten_users()) == {"gone"}
        assert s.get_items(["i1"])[0].features == {"title": "A"}
        assert s.get_meta("k") == "v"
        assert s.append_events([Event("u9", "z", 1, "e1"), Event("u1", "b", 50)]) == (0, 2)  # still dups
        assert s.put_users([("u1", {"age": 9})], older_than=500) == 0  # the feature-write time survives too
    finally:
        s.close()


def test_concurrent_appends_lose_nothing(store: Store) -> None:
    threads, per_thread = 8, 150
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for k in range(0, per_thread, 3):
                # Thread t writes its own user and a shared one; the shared one also gets a
                # duplicate of another thread's events, which must count once overall.
                store.append_events(
                    [
                        Event(f"u{t}", f"i{k}", k + 1),
                        Event("shared", f"t{t}-{k}", k + 1, f"e{t}-{k}"),
                        Event(f"u{t}", f"i{k + 1}", k + 2),
                        Event(f"u{(t + 1) % threads}", f"i{k}", k + 1),
                    ]
                )
                store.get_users([f"u{t}", "shared"], 10)
        except BaseException as exc:  # surfaced below: a thread's exception is otherwise lost
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    per_user = 2 * per_thread // 3
    assert [len(h) for h in histories(store, [f"u{t}" for t in range(threads)], 1000)] == [per_user] * threads
    assert len(histories(store, ["shared"], 10_000)[0]) == threads * per_thread // 3


def test_open_store_urls(tmp_path: Path) -> None:
    with open_store("memory://") as s:
        assert isinstance(s, MemoryStore)
    with open_store(f"sqlite://{tmp_path}/a/features.db") as s:  # sqlite:///abs/path
        assert isinstance(s, SqliteStore) and s.path == tmp_path / "a" / "features.db"
    with pytest.raises(ValueError, match=r"memory://\.\.\., sqlite://\.\.\., redis://\.\.\."):
        open_store("postgres://localhost/0")
    with pytest.raises(ValueError, match="needs a path"):
        open_store("sqlite://")
    with pytest.raises(ValueError, match="needs a path"):
        open_store("sqlite://?max_events=3")
    with pytest.raises(ValueError, match="synchronous must be one of NORMAL, FULL"):
        open_store(f"sqlite://{tmp_path}/b.db?synchronous=OFF")
    with pytest.raises(ValueError, match="takes no path"):
        open_store("memory://somewhere")
    with pytest.raises(ValueError):
        open_store("features.db")


def test_sqlite_relative_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with open_store("sqlite://rel/features.db") as s:
        s.set_meta("k", "v")
    assert (tmp_path / "rel" / "features.db").is_file()


def test_sqlite_opens_a_version_1_file(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as conn:  # the version 1 layout, as the first release wrote it
        conn.executescript(
            "CREATE TABLE users (user_id TEXT PRIMARY KEY, features TEXT NOT NULL, updated_at INTEGER NOT NULL) WITHOUT ROWID;"
            "CREATE TABLE items (item_id TEXT PRIMARY KEY, features TEXT NOT NULL, updated_at INTEGER NOT NULL) WITHOUT ROWID;"
            "CREATE TABLE events (user_id TEXT NOT NULL, item_id TEXT NOT NULL, ts INTEGER NOT NULL, event_id TEXT);"
            "CREATE UNIQUE INDEX events_by_user ON events(user_id, ts, item_id);"
            "CREATE UNIQUE INDEX events_by_id ON events(event_id) WHERE event_id IS NOT NULL;"
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;"
            "INSERT INTO users VALUES ('u1', '{}', 5); INSERT INTO events VALUES ('u1', 'b', 20, NULL), ('u1', 'a', 10, 'e1');"
            "PRAGMA user_version=1;"
        )
    conn.close()
    with SqliteStore(path) as s:
        assert histories(s, ["u1"]) == [[("a", 10), ("b", 20)]]
        assert s.append_events([Event("u1", "a", 10), Event("u2", "x", 1, "e1")]) == (0, 2)
        assert s.forget_user("u1") and s.forgotten_users().keys() == {"u1"}


def test_sqlite_version_2_rows_keep_their_updated_at_as_feature_time(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "v2.db"
    SqliteStore(path).close()
    with sqlite3.connect(path) as conn:  # the version 2 layout: no feature-write time
        conn.executescript(
            "DROP TABLE users;"
            "CREATE TABLE users (user_id TEXT PRIMARY KEY, features TEXT NOT NULL, updated_at INTEGER NOT NULL) WITHOUT ROWID;"
            "INSERT INTO users VALUES ('u1', '{}', 5), ('u2', '{}', 5); PRAGMA user_version=2;"
        )
    conn.close()
    with SqliteStore(path) as s:
        # Unknown whether updated_at came from features or events: keep the row as if features.
        assert s.put_users([("u1", {"age": 1})], older_than=5) == 0
        assert s.put_users([("u2", {"age": 1})], older_than=6) == 1


def test_redis_rows_without_a_feature_time_use_updated_at(redis_url: str, redis_prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        client.hset(redis_prefix + "users", mapping={"u1": "5 {}", "u2": "5 {}"})  # as an older release wrote them
        with open_store(f"{redis_url}?prefix={redis_prefix}") as s:
            assert s.put_users([("u1", {"age": 1})], older_than=5) == 0
            assert s.put_users([("u2", {"age": 1})], older_than=6) == 1
    finally:
        client.close()


def test_redis_clear_leaves_other_prefixes_alone(redis_url: str, redis_prefix: str) -> None:
    import redis

    # A prefix that extends another one must survive the shorter one's clear, and vice versa.
    with (
        open_store(f"{redis_url}?prefix={redis_prefix}") as outer,
        open_store(f"{redis_url}?prefix={redis_prefix}x:") as inner,
    ):
        for s in (outer, inner):
            s.put_users([("u1", {"age": 1})])
            s.put_items([("i1", {})])
            s.append_events([Event("u1", "a", 1, "e1"), Event("x:u1", "a", 1, "e2")])
            s.forget_user("gone")
            s.set_meta("k", "v")
        outer.clear()
        assert inner.count_users() == 2 and inner.get_users(["u1"], 10)[0].history == ["a"]
        client = redis.Redis.from_url(redis_url)
        try:
            left = {k.decode() for k in client.scan_iter(match=redis_prefix + "*", count=1000)}
        finally:
            client.close()
        assert left and all(k.startswith(redis_prefix + "x:") for k in left)
        inner.clear()
        assert outer.count_users() == 0 and inner.count_users() == 0


def test_append_event_columns_follows_the_append_events_rules(store: Store, clock: Clock) -> None:
    clock.now = 5_000.0
    recorded = store.append_event_columns(["u1", "u1", "u2", "u1"], ["a", "b", "c", "a"], [20, 10, 5, 20])
    assert recorded == (3, 1)  # the repeated (u1, a, 20) in the batch is a duplicate
    assert store.append_event_columns(["u1", "u2"], ["b", "d"], [10, 10]) == (1, 1)
    assert store.append_event_columns([], [], []) == (0, 0)
    u1, u2 = store.get_users(["u1", "u2"], 10)
    assert (u1.history, u1.history_timestamps) == (["b", "a"], [10, 20])
    assert (u2.history, u2.updated_at) == (["c", "d"], 5_000)
    with store.bulk_load():  # a bulk block changes nothing about what is written
        store.append_event_columns(["u3"], ["x"], [1])
    assert store.get_users(["u3"], 10)[0].history == ["x"]
    with pytest.raises(ValueError):
        store.append_event_columns(["u1"], ["a", "b"], [1])


def test_append_event_columns_keeps_the_bound(open_backend: Factory) -> None:
    with open_backend(max_events=3) as store:
        users = ["u"] * 5
        assert store.append_event_columns(users, ["a", "b", "c", "d", "e"], [1, 2, 3, 4, 5]) == (5, 0)
        assert store.get_users(["u"], 10)[0].history == ["c", "d", "e"]


def kinds(store: Store, user_ids: list[str], max_history: int = 100) -> list[list[tuple[str, int, str]] | None]:
    return [
        None if r is None else list(zip(r.history, r.history_timestamps, r.history_events, strict=True))
        for r in store.get_users(user_ids, max_history)
    ]


def test_event_kinds_are_kept_aligned_with_the_history(open_backend: Factory) -> None:
    # Kinds with the characters a backend's encoding might trip on, on items that have them too.
    odd = "a:b#c 🛒" + "k" * 57  # 64 characters, more bytes
    with open_backend(max_events=4) as s:
        assert s.append_events([Event("u1", "i2", 200, "", "view"), Event("u1", "#3:x", 300, "e3", odd)]) == (2, 0)
        # A late event lands in its place, with its kind; an event without a kind reads "".
        assert s.append_events([Event("u1", "i1", 100, "", "purchase"), Event("u1", "i4", 400)]) == (2, 0)
        assert kinds(s, ["u1"]) == [[("i1", 100, "purchase"), ("i2", 200, "view"), ("#3:x", 300, odd), ("i4", 400, "")]]
        assert kinds(s, ["u1"], 2) == [[("#3:x", 300, odd), ("i4", 400, "")]]  # the same tail as the history
        assert s.get_users(["u1"], 0)[0].history_events == []
        # A duplicate never changes the kind held, whether by key or by event id.
        assert s.append_events([Event("u1", "i2", 200, "", "cart"), Event("u1", "other", 1, "e3", "cart")]) == (0, 2)
        # The bound drops the oldest events with their kinds, and frees their keys.
        assert s.append_events([Event("u1", "i5", 500, "", "click")]) == (1, 0)
        assert [k for _, _, k in kinds(s, ["u1"])[0]] == ["view", odd, "", "click"]
        assert s.append_events([Event("u1", "i1", 100, "", "view")]) == (1, 0)  # dropped at once, again
        # Column-wise, with and without kinds.
        assert s.append_event_columns(["u2", "u2"], ["a", "b"], [1, 2], ["view", ""]) == (2, 0)
        assert s.append_event_columns(["u2"], ["c"], [3]) == (1, 0)
        assert kinds(s, ["u2"]) == [[("a", 1, "view"), ("b", 2, ""), ("c", 3, "")]]
        with pytest.raises(ValueError):
            s.append_event_columns(["u2"], ["d"], [4], ["view", "view"])


def test_forgetting_a_user_removes_its_kinds(store: Store) -> None:
    store.append_events([Event("u1", "a", 100, "e1", "purchase"), Event("u2", "a", 100, "", "view")])
    assert store.forget_user("u1") is True
    # The same events come back as new ones, without the kinds the forgotten ones had.
    assert store.append_events([Event("u1", "a", 100, "e1")]) == (1, 0)
    assert kinds(store, ["u1", "u2"]) == [[("a", 100, "")], [("a", 100, "view")]]


def test_event_kinds_are_durable(backend: str, open_backend: Factory) -> None:
    if not BACKENDS[backend].persistent:
        pytest.skip(f"{backend} store is not persistent")
    with open_backend() as s:
        s.append_events([Event("u1", "a", 100, "e1", "purchase"), Event("u1", "b", 50)])
        with s.bulk_load():
            s.append_event_columns(["u1"], ["c"], [150], ["cart"])
    with open_backend() as s:
        assert kinds(s, ["u1"]) == [[("b", 50, ""), ("a", 100, "purchase"), ("c", 150, "cart")]]
