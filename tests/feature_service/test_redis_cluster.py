"""The Redis store on a real 3-primary Redis Cluster: the store contract, hash tags, event-id claims.

The contract checks are the shared suite's own functions (test_store_contract.py), run here
against a cluster store. Skips without redis-server / redis-cli, unless RECSYS_REQUIRE_REDIS=1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from feature_service.stores import RedisStore, open_store
from feature_service.stores.base import Event
from feature_service.stores.redis_cluster import RedisClusterStore
from recsys.client import free_port

from . import test_store_contract as contract
from .conftest import REDIS_REQUIRED, RedisServer, redis_binary
from .test_store_contract import Clock, Factory, histories

# Every contract test runs here against the cluster, except those about other backends or about
# one Redis's own layout (what they check of the cluster store is covered below).
NOT_FOR_THE_CLUSTER = {
    "test_every_backend_has_a_factory",
    "test_url_options",
    "test_open_store_urls",
    "test_sqlite_relative_url",
    "test_sqlite_opens_a_version_1_file",
    "test_sqlite_version_2_rows_keep_their_updated_at_as_feature_time",
    "test_redis_rows_without_a_feature_time_use_updated_at",
    "test_redis_clear_leaves_other_prefixes_alone",
}
globals().update(
    {
        name: test
        for name, test in vars(contract).items()
        if name.startswith("test_") and name not in NOT_FOR_THE_CLUSTER
    }
)


class RedisCluster:
    """Three cluster-enabled redis-servers on free loopback ports, joined into one cluster
    (every slot covered, no replicas)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ports = [free_port() for _ in range(3)]
        self.bus_ports = [free_port() for _ in range(3)]  # the default, port + 10000, may not exist
        self.processes: list[subprocess.Popen] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0?cluster=true"

    def start(self) -> RedisCluster:
        server, cli = redis_binary(), shutil.which("redis-cli")
        if cli is None:
            reason = "redis-cli is not installed (apt-get install -y redis-tools)"
            if REDIS_REQUIRED:
                pytest.fail(f"{reason}, and RECSYS_REQUIRE_REDIS=1 requires the Redis tests to run")
            pytest.skip(reason)
        for port, bus_port in zip(self.ports, self.bus_ports):
            node = self.directory / str(port)
            node.mkdir(parents=True, exist_ok=True)
            args = ["--bind", "127.0.0.1", "--port", str(port), "--dir", str(node), "--cluster-enabled", "yes"]
            args += ["--cluster-port", str(bus_port)]
            args += ["--cluster-config-file", "nodes.conf", "--appendonly", "yes", "--save", ""]
            args += ["--logfile", str(node / "redis.log")]
            self.processes.append(subprocess.Popen([server, *args], stdout=subprocess.DEVNULL))
        try:
            for port in self.ports:
                self._wait(cli, port, "PING", "PONG")
            create = [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports), "--cluster-yes"]
            subprocess.run(create, check=True, capture_output=True, timeout=30)
            for port in self.ports:
                self._wait(cli, port, "CLUSTER INFO", "cluster_state:ok")
        except BaseException:
            self.stop()
            raise
        return self

    @staticmethod
    def _wait(cli: str, port: int, command: str, expect: str) -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            answer = subprocess.run([cli, "-p", str(port), *command.split()], capture_output=True, text=True)
            if expect in answer.stdout:
                return
            time.sleep(0.05)
        raise RuntimeError(f"redis node {port} never answered {command!r} with {expect!r}")

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait(10)
        self.processes = []


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    c = RedisCluster(tmp_path_factory.mktemp("cluster")).start()
    yield c
    c.stop()


@pytest.fixture
def client(cluster: RedisCluster) -> Iterator[Any]:
    from redis.cluster import RedisCluster as Client

    c = Client(host="127.0.0.1", port=cluster.ports[0])
    yield c
    c.close()


@pytest.fixture
def prefix(cluster: RedisCluster, client: Any, tmp_path: Path) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    p = f"test-{tmp_path.name}-{os.getpid()}:"
    yield p
    for key in client.scan_iter(match=p + "*", count=1000, target_nodes=client.PRIMARIES):
        client.delete(key)


# The fixtures the contract functions ask for, here opening cluster stores.
@pytest.fixture
def backend() -> str:
    return "redis"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def open_backend(cluster: RedisCluster, prefix: str, clock: Clock) -> Factory:
    def open_(**options: Any) -> RedisStore:
        extra = "".join(f"&{k}={v}" for k, v in options.items())
        return RedisStore.from_url(f"{cluster.url}&prefix={prefix}{extra}", clock=clock)

    return open_


@pytest.fixture
def store(open_backend: Factory) -> Iterator[Any]:
    s = open_backend()
    assert isinstance(s, RedisClusterStore)
    yield s
    s.close()


def test_a_users_keys_share_one_slot_and_users_spread_over_the_nodes(store: Any, client: Any, prefix: str) -> None:
    users = [f"user-{n}" for n in range(40)]
    store.put_users([(u, {"age": 1}) for u in users])
    store.append_events([Event(u, "a", 1, f"e-{u}") for u in users] + [Event(u, "b", 2) for u in users])
    store.forget_user("user-0")
    store.put_items([(f"item-{n}", {}) for n in range(40)])
    slots: dict[str, set[int]] = {}
    for key in client.scan_iter(match=prefix + "*", count=1000, target_nodes=client.PRIMARIES):
        tag = key.decode()[len(prefix) :].partition("}")[0]
        slots.setdefault(tag, set()).add(client.keyslot(key))
    assert {len(s) for s in slots.values()} == {1}  # every key of one user, item or event id: one slot
    assert {f"{{u:{u}" for u in users} <= slots.keys()
    nodes = {client.get_node_from_key(f"{prefix}{{u:{u}}}:r").name for u in users}
    assert len(nodes) == 3  # 40 users land on all three primaries


def test_counts_and_clear_see_every_node(store: Any, open_backend: Factory) -> None:
    store.put_users([(f"u{n}", {}) for n in range(30)])
    store.put_items([(f"i{n}", {}) for n in range(25)])
    store.append_events([Event(f"events-only-{n}", "i1", n) for n in range(5)])
    assert (store.count_users(), store.count_items()) == (35, 25)
    with open_backend() as other:  # a second store, as another feature service replica sees it
        assert other.count_users() == 35
    store.clear()
    assert (store.count_users(), store.count_items()) == (0, 0)


def test_bulk_puts_keep_batch_order_for_repeated_ids(store: Any) -> None:
    # Rows of one batch apply in order, as on one Redis: a repeated id is written twice.
    assert store.put_users([("u1", {"v": 1}), ("u1", {"v": 2}), ("u1", {"v": 2})]) == 2
    assert store.get_users(["u1"], 0)[0].features == {"v": 2}


def test_an_event_id_is_held_once_across_users_in_one_batch(store: Any) -> None:
    assert store.append_events([Event("u1", "a", 1, "same"), Event("u2", "b", 2, "same")]) == (1, 1)
    assert histories(store, ["u1", "u2"]) == [[("a", 1)], None]
    # A duplicate by (user, item, timestamp) releases the event id it claimed.
    assert store.append_events([Event("u1", "a", 1, "fresh")]) == (0, 1)
    assert store.append_events([Event("u3", "c", 3, "fresh")]) == (1, 0)


def test_a_dead_writers_claim_is_taken_over_after_it_goes_stale(
    store: Any, client: Any, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A writer that claimed event ids and died before recording them: one claim made long ago,
    # one just now (its write may still be in flight).
    client.set(f"{prefix}{{e:old}}", "0 deadbeef u9")
    now_ms = int(time.time() * 1000)
    client.set(f"{prefix}{{e:new}}", f"{now_ms} deadbeef u9")
    assert store.append_events([Event("u1", "a", 1, "old"), Event("u1", "b", 2, "new")]) == (1, 1)
    assert histories(store, ["u1"]) == [[("a", 1)]]
    # A stale claim whose user does hold the event stands; one whose user lost it is taken over.
    monkeypatch.setattr("feature_service.stores.redis_cluster._CLAIM_STALE_MS", 0)  # every claim is stale now
    assert store.append_events([Event("u2", "x", 1, "old")]) == (0, 1)
    assert store.append_events([Event("u2", "y", 2, "new")]) == (1, 0)


def test_claims_of_dropped_and_forgotten_events_are_released(open_backend: Factory, client: Any, prefix: str) -> None:
    with open_backend(max_events=2) as s:
        s.append_events([Event("u1", f"i{t}", t, f"e{t}") for t in (1, 2, 3)])
        assert client.get(f"{prefix}{{e:e1}}") is None and client.get(f"{prefix}{{e:e3}}") is not None
        s.forget_user("u1")
        assert list(client.scan_iter(match=f"{prefix}{{e:*", target_nodes=client.PRIMARIES)) == []


def test_scripts_flushed_from_the_nodes_are_reloaded_and_nothing_runs_twice(store: Any, client: Any) -> None:
    store.append_events([Event("u1", "a", 1, "e1")])
    for node in client.get_primaries():  # as after a failover to a replica that never loaded them
        client.execute_command("SCRIPT", "FLUSH", target_nodes=node)
    events = [Event(f"u{n}", "b", 2, f"f{n}") for n in range(20)]
    assert store.append_events(events) == (20, 0)
    assert store.append_events(events) == (0, 20)
    assert [len(h) for h in histories(store, [f"u{n}" for n in range(20)])] == [1, 2] + [1] * 18


def test_cluster_option_must_match_the_server(cluster: RedisCluster, tmp_path: Path) -> None:
    base = cluster.url.partition("?")[0]
    with pytest.raises(ValueError, match="is a Redis Cluster: add cluster=true"):
        open_store(base)
    single = RedisServer(tmp_path / "single").start()
    try:
        with pytest.raises(ValueError, match="is not a Redis Cluster"):
            open_store(single.url + "?cluster=true")
        with open_store(single.url + "?cluster=false") as s:
            assert type(s) is RedisStore
    finally:
        single.stop()
    with pytest.raises(ValueError, match="cluster='maybe' is not a valid"):
        open_store(base + "?cluster=maybe")
    with pytest.raises(ValueError, match="prefix must not contain"):
        open_store(base + "?cluster=true&prefix={x}:")


def test_unreachable_cluster_is_unavailable() -> None:
    from feature_service.stores import StoreUnavailable

    with pytest.raises(StoreUnavailable):
        open_store(f"redis://127.0.0.1:{free_port()}/0?cluster=true")


def test_ids_with_braces_and_glob_characters(store: Any, client: Any, prefix: str) -> None:
    odd = ["a}b", "{x}", "c*", "d?[e]", "f:r", "g}:r"]
    store.put_users([(u, {"u": u}) for u in odd])
    store.append_events([Event(u, "i", 1, f"e-{u}") for u in odd])
    assert [r.features["u"] for r in store.get_users(odd, 10)] == odd
    assert store.count_users() == len(odd)
    for u in odd:
        store.forget_user(u)
        keys = [k for k in client.scan_iter(match=prefix + "*", target_nodes=client.PRIMARIES) if u.encode() in k]
        assert len({client.keyslot(k) for k in keys}) <= 1
    assert store.forgotten_users() == dict.fromkeys(odd, 1_000) and store.count_users() == 0


def test_clear_leaves_a_longer_prefix_alone(cluster: RedisCluster, prefix: str, client: Any) -> None:
    with (
        open_store(f"{cluster.url}&prefix={prefix}") as outer,
        open_store(f"{cluster.url}&prefix={prefix}x:") as inner,
    ):
        for s in (outer, inner):
            s.put_users([("u1", {"age": 1})])
            s.put_items([("i1", {})])
            s.append_events([Event("u1", "a", 1, "e1")])
            s.forget_user("gone")
            s.set_meta("k", "v")
        outer.clear()
        assert inner.count_users() == 1 and inner.get_users(["u1"], 10)[0].history == ["a"]
        left = {k.decode() for k in client.scan_iter(match=prefix + "*", target_nodes=client.PRIMARIES)}
        assert left and all(k.startswith(prefix + "x:") for k in left)
