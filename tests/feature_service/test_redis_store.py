"""What only the Redis backend has: a server that can go away and come back, key prefixes, AOF."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from feature_service.stores import RedisStore, StoreUnavailable, open_store
from feature_service.stores.base import Event

from .conftest import RedisServer


def test_down_is_unavailable_fast_and_back_needs_no_reopen(redis_server: RedisServer) -> None:
    with open_store(redis_server.url) as store:
        store.append_events([Event("u1", "a", 100, "e1")])
        redis_server.kill()
        start = time.monotonic()
        with pytest.raises(StoreUnavailable, match=f"127.0.0.1:{redis_server.port}"):
            store.get_users(["u1"], 10)
        with pytest.raises(StoreUnavailable):
            store.ping()
        assert time.monotonic() - start < 2.0  # no long retry loop while it is down
        redis_server.start()  # same port, same AOF file
        store.ping()
        assert store.get_users(["u1"], 10)[0].history == ["a"]  # acknowledged write survived SIGKILL
        assert store.append_events([Event("u1", "a", 100, "e1")]) == (0, 1)


def test_unreachable_at_open_is_unavailable() -> None:
    from recsys.client import free_port

    with pytest.raises(StoreUnavailable):
        open_store(f"redis://127.0.0.1:{free_port()}/0")


def test_prefixes_keep_stores_apart(redis_url: str, redis_prefix: str) -> None:
    with (
        open_store(f"{redis_url}?prefix={redis_prefix}a:") as a,
        open_store(f"{redis_url}?prefix={redis_prefix}b:") as b,
    ):
        a.put_users([("u1", {"age": 1})])
        a.append_events([Event("u1", "x", 1, "shared-id")])
        assert b.get_users(["u1"], 10) == [None]
        assert b.append_events([Event("u1", "x", 1, "shared-id")]) == (1, 0)
        b.forget_user("u1")
        assert a.get_users(["u1"], 10)[0].history == ["x"] and a.forgotten_users() == {}


def test_aof_off_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server = RedisServer(tmp_path / "r", appendonly=False).start()
    try:
        with caplog.at_level(logging.WARNING, logger="feature_service.stores.redis"):
            RedisStore.from_url(server.url).close()
        assert "appendonly off" in caplog.text
    finally:
        server.stop()


def test_password_is_not_in_messages(redis_server: RedisServer) -> None:
    with open_store(f"redis://:secret@127.0.0.1:{redis_server.port}/0") as store:
        redis_server.kill()
        with pytest.raises(StoreUnavailable) as info:
            store.ping()
    assert f"127.0.0.1:{redis_server.port}" in str(info.value) and "secret" not in str(info.value)


def test_single_redis_layout_is_unchanged_by_cluster_support(redis_url: str, redis_prefix: str) -> None:
    """Stores on one Redis keep the key names earlier releases wrote (no hash tags), so an
    existing store opens as is: hash-tagged keys exist only in cluster mode."""
    import redis

    with open_store(f"{redis_url}?prefix={redis_prefix}") as store:
        store.put_users([("u1", {"age": 1})])
        store.put_items([("i1", {})])
        store.append_events([Event("u1", "a", 1, "e1")])
        store.forget_user("u2")
        store.set_meta("k", "v")
        client = redis.Redis.from_url(redis_url)
        try:
            keys = {k.decode()[len(redis_prefix) :] for k in client.scan_iter(match=redis_prefix + "*")}
        finally:
            client.close()
    names = {"users", "features_at", "items", "h:u1", "k:u1", "e:u1", "eids", "seq", "forgotten", "meta"}
    assert keys == names
