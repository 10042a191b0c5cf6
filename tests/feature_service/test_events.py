"""Event kinds in the feature service: recorded, validated, stored by every backend (including
files and keys written before kinds existed), loaded from artifacts and read by the client."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from feature_service.loader import load_artifact
from feature_service.server import create_feature_server
from feature_service.service import FeatureServiceCore
from feature_service.stores import MemoryStore, SqliteStore, open_store
from feature_service.stores.base import Event
from inference_server.feature_client import FeatureClient
from recsys.artifact import HISTORIES, write_jsonl
from recsys.errors import FailedPrecondition, InvalidArgument
from recsys.v1 import features_pb2, features_pb2_grpc, types_pb2

from .conftest import SCHEMA, write_artifact
from .test_server import store_url
from .test_store_contract import kinds


@pytest.fixture(params=["memory", "sqlite", "redis"])
def served(request: pytest.FixtureRequest, artifact_dir: Path, tmp_path: Path) -> Iterator[tuple[int, str]]:
    server, port, _health, core = create_feature_server(
        artifact_dir, store_url(request.param, request, tmp_path), host="127.0.0.1", max_workers=4
    )
    yield port, request.param
    server.stop(None)
    core.close()


@pytest.fixture
def stub(served: tuple[int, str]) -> Iterator[features_pb2_grpc.FeatureServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{served[0]}") as channel:
        yield features_pb2_grpc.FeatureServiceStub(channel)


def record(stub: features_pb2_grpc.FeatureServiceStub, *events: tuple) -> features_pb2.RecordInteractionsResponse:
    """RecordInteractions of (user, item, timestamp[, event[, event_id]]) tuples."""
    interactions = [
        types_pb2.Interaction(
            user_id=e[0],
            item_id=e[1],
            timestamp=e[2],
            event=e[3] if len(e) > 3 else "",
            event_id=e[4] if len(e) > 4 else "",
        )
        for e in events
    ]
    return stub.RecordInteractions(features_pb2.RecordInteractionsRequest(interactions=interactions), timeout=5)


def test_kinds_are_recorded_and_served_aligned_with_the_history(stub: features_pb2_grpc.FeatureServiceStub) -> None:
    reply = record(stub, ("k1", "a", 10, "view"), ("k1", "b", 30, "purchase", "p1"), ("k1", "c", 20))
    assert (reply.recorded, reply.duplicates) == (3, 0)
    assert record(stub, ("k1", "b", 30, "view"), ("k1", "z", 99, "cart", "p1")).duplicates == 2  # kinds kept

    def users(max_history: int, ids: list[str]) -> list[features_pb2.UserFeatures]:
        request = features_pb2.GetUserFeaturesRequest(user_ids=ids, max_history=max_history)
        return list(stub.GetUserFeatures(request, timeout=5).users)

    (k1,) = users(10, ["k1"])
    assert list(k1.history) == ["a", "c", "b"] and list(k1.history_events) == ["view", "", "purchase"]
    (k1,) = users(2, ["k1"])  # truncated like the history
    assert list(k1.history) == ["c", "b"] and list(k1.history_events) == ["", "purchase"]
    (k1,) = users(1, ["k1"])
    assert list(k1.history) == ["b"] and list(k1.history_events) == ["purchase"]
    # None of the returned events has a kind: no kinds sent, the answer as before kinds existed.
    record(stub, ("k1", "d", 40))
    (k1,) = users(1, ["k1"])
    assert list(k1.history) == ["d"] and list(k1.history_events) == []
    u1, nobody = users(10, ["u1", "nobody"])  # the artifact's events have no kinds
    assert len(u1.history) == 4 and list(u1.history_events) == []
    assert not nobody.found and list(nobody.history_events) == []


@pytest.mark.parametrize(
    ("kind", "problem"),
    [
        ("x" * 65, "event is longer than 64 characters"),
        ("new\nline", "event holds a control character"),
        ("del\x7f", "event holds a control character"),
        ("c1\x85", "event holds a control character"),
    ],
)
def test_bad_kinds_reject_the_whole_batch(stub: features_pb2_grpc.FeatureServiceStub, kind: str, problem: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        record(stub, ("bad", "a", 1, "view"), ("bad", "b", 2, kind))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"interactions[1]: {problem}" in caught.value.details()
    reply = stub.GetUserFeatures(features_pb2.GetUserFeaturesRequest(user_ids=["bad"]), timeout=5)
    assert not reply.users[0].found  # nothing of the batch was written
    assert record(stub, ("bad", "a", 1, "x" * 64)).recorded == 1  # the limit itself is fine


def test_sqlite_opens_a_version_3_file_and_its_events_read_without_kinds(tmp_path: Path) -> None:
    path = tmp_path / "v3.db"
    with sqlite3.connect(path) as conn:  # the version 3 layout: events without a kind column
        conn.executescript(
            "CREATE TABLE users (user_id TEXT PRIMARY KEY, features TEXT NOT NULL, updated_at INTEGER NOT NULL,"
            " features_at INTEGER) WITHOUT ROWID;"
            "CREATE TABLE items (item_id TEXT PRIMARY KEY, features TEXT NOT NULL, updated_at INTEGER NOT NULL)"
            " WITHOUT ROWID;"
            "CREATE TABLE events (user_id TEXT NOT NULL, item_id TEXT NOT NULL, ts INTEGER NOT NULL, event_id TEXT);"
            "CREATE INDEX events_by_user_time ON events(user_id, ts);"
            "CREATE UNIQUE INDEX events_by_key ON events(user_id, item_id, ts);"
            "CREATE UNIQUE INDEX events_by_id ON events(event_id) WHERE event_id IS NOT NULL;"
            "CREATE TABLE forgotten (user_id TEXT PRIMARY KEY, forgotten_at INTEGER NOT NULL) WITHOUT ROWID;"
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;"
            "INSERT INTO users VALUES ('u1', '{}', 5, 0);"
            "INSERT INTO events VALUES ('u1', 'a', 10, 'e1'), ('u1', 'b', 20, NULL);"
            "PRAGMA user_version=3;"
        )
    conn.close()
    with SqliteStore(path) as s:
        assert kinds(s, ["u1"]) == [[("a", 10, ""), ("b", 20, "")]]
        assert s.append_events([Event("u1", "a", 10, "", "view"), Event("u1", "c", 30, "", "view")]) == (1, 1)
        assert kinds(s, ["u1"]) == [[("a", 10, ""), ("b", 20, ""), ("c", 30, "view")]]
    with SqliteStore(path) as s:  # the migration ran once and the kinds stayed
        assert kinds(s, ["u1"])[0][-1] == ("c", 30, "view")
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (4,)
    conn.close()


def test_redis_history_members_without_a_kind_read_as_no_kind(redis_url: str, redis_prefix: str) -> None:
    import redis

    p = redis_prefix
    client = redis.Redis.from_url(redis_url)
    try:  # one user's events as a release without kinds wrote them
        client.hset(p + "users", "u1", "5 {}")
        client.zadd(p + "h:u1", {f"{1:016x}10:a": 10, f"{2:016x}20:b:c": 20})
        client.sadd(p + "k:u1", "10:a", "20:b:c")
        client.set(p + "seq", 2)
        with open_store(f"{redis_url}?prefix={p}&max_events=3") as s:
            assert kinds(s, ["u1"]) == [[("a", 10, ""), ("b:c", 20, "")]]
            assert s.append_events([Event("u1", "a", 10, "", "view"), Event("u1", "d", 30, "", "cart")]) == (1, 1)
            # The bound drops an old member and frees its key, as for the new ones.
            assert s.append_events([Event("u1", "e", 40, "", "view")]) == (1, 0)
            assert kinds(s, ["u1"]) == [[("b:c", 20, ""), ("d", 30, "cart"), ("e", 40, "view")]]
            assert not client.sismember(p + "k:u1", "10:a")
            assert s.append_events([Event("u1", "b:c", 20, "", "view")]) == (0, 1)  # still held
    finally:
        client.close()


def test_redis_refuses_a_kind_too_long_for_its_members(redis_url: str, redis_prefix: str) -> None:
    with open_store(f"{redis_url}?prefix={redis_prefix}") as s:
        with pytest.raises(ValueError, match="event kind of 80000 bytes"):
            s.append_events([Event("u1", "a", 1, "", "view"), Event("u1", "b", 2, "", "é" * 40_000)])
        assert s.get_users(["u1"], 10) == [None]  # refused before anything was sent
        assert s.append_events([Event("u1", "c", 3, "", "é" * 30_000)]) == (1, 0)  # 60,000 bytes fit
        assert s.get_users(["u1"], 10)[0].history_events == ["é" * 30_000]


def test_artifact_histories_load_with_their_kinds(tmp_path: Path) -> None:
    artifact = write_artifact(tmp_path / "artifact")
    write_jsonl(
        artifact / HISTORIES,
        [
            # Out of time order and longer than the bound: kinds move with their events.
            {"user_id": "u1", "item_ids": ["c", "a", "b"], "timestamps": [30, 10, 20], "events": ["buy", "view", ""]},
            {"user_id": "u2", "item_ids": ["x"], "timestamps": [5]},  # no kinds
        ],
    )
    store = MemoryStore(max_events=2)
    report = load_artifact(store, artifact)
    assert report.events_recorded == 3
    assert kinds(store, ["u1", "u2"]) == [[("b", 20, ""), ("c", 30, "buy")], [("x", 5, "")]]
    assert load_artifact(store, artifact).events_recorded == 0  # idempotent, kinds or not


@pytest.mark.parametrize(
    ("events", "problem"),
    [
        ("view", "'events' must be a list as long as 'item_ids'"),
        (["view"], "'events' must be a list as long as 'item_ids'"),
        (["view", 3], "events[1] is 3, not a string"),
        (["view", "y" * 65], "events[1] is longer than 64 characters"),
        (["tab\there", "view"], "events[0] holds a control character"),
    ],
)
def test_bad_kinds_in_an_artifact_are_refused_before_any_event(tmp_path: Path, events: object, problem: str) -> None:
    artifact = write_artifact(tmp_path / "artifact")
    write_jsonl(
        artifact / HISTORIES,
        [
            {"user_id": "u8", "item_ids": ["a"], "timestamps": [1]},
            {"user_id": "u9", "item_ids": ["a", "b"], "timestamps": [1, 2], "events": events},
        ],
    )
    store = MemoryStore()
    with pytest.raises(FailedPrecondition, match=r"histories\.jsonl line 2: " + problem.replace("[", r"\[")):
        load_artifact(store, artifact)
    assert store.get_users(["u8", "u9"], 10) == [None, None]  # one batch: nothing of it was written


def test_sqlite_bulk_load_of_kinds_and_mixed_lines(tmp_path: Path) -> None:
    artifact = write_artifact(tmp_path / "artifact")
    write_jsonl(
        artifact / HISTORIES,
        [
            {"user_id": "u0", "item_ids": ["a", "b"], "timestamps": [1, 2]},
            {"user_id": "u1", "item_ids": ["a", "b"], "timestamps": [1, 2], "events": ["view", "cart"]},
        ],
    )
    with SqliteStore(tmp_path / "f.db") as s:
        assert load_artifact(s, artifact).events_recorded == 4
        assert kinds(s, ["u0", "u1"]) == [[("a", 1, ""), ("b", 2, "")], [("a", 1, "view"), ("b", 2, "cart")]]


# --- The inference server's client --------------------------------------------------------


def test_client_fills_history_events(artifact_dir: Path) -> None:
    server, port, _health, core = create_feature_server(artifact_dir, "memory://", host="127.0.0.1", max_workers=2)
    client = FeatureClient(f"127.0.0.1:{port}", timeout_s=5)
    try:
        core.record_interactions([Event("u2", "i9", 500, "", "purchase")])
        view = client.get_user("u2", 10)
        assert view.history == ("i2", "i9") and view.history_events == ("", "purchase")
        assert client.get_user("nobody", 10).history_events == ()
    finally:
        client.close()
        server.stop(None)
        core.close()


class _Answers(features_pb2_grpc.FeatureServiceServicer):
    """A feature service answering every user with a fixed history and kinds."""

    def __init__(self, history_events: list[str]) -> None:
        self.history_events = history_events

    def GetUserFeatures(self, request, context):  # noqa: N802 (the RPC's name)
        users = [
            features_pb2.UserFeatures(
                user_id=uid,
                found=True,
                history=["a", "b"],
                history_timestamps=[1, 2],
                history_events=self.history_events,
            )
            for uid in request.user_ids
        ]
        return features_pb2.GetUserFeaturesResponse(users=users, schema_hash=SCHEMA.contract().hash)


@pytest.fixture
def answering() -> Iterator[tuple[_Answers, FeatureClient]]:
    answers = _Answers([])
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    features_pb2_grpc.add_FeatureServiceServicer_to_server(answers, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    client = FeatureClient(f"127.0.0.1:{port}", timeout_s=5, combine_users=False)
    yield answers, client
    client.close()
    server.stop(None)


def test_client_reads_an_older_service_as_no_kinds(
    answering: tuple[_Answers, FeatureClient], caplog: pytest.LogCaptureFixture
) -> None:
    answers, client = answering
    with caplog.at_level(logging.WARNING, logger="inference_server.feature_client"):
        view = client.get_user("u1", 10)
    assert view.history == ("a", "b") and view.history_events == ()
    assert caplog.records == []  # an older service is no fault


def test_client_reads_misaligned_kinds_as_none_with_one_warning(
    answering: tuple[_Answers, FeatureClient], caplog: pytest.LogCaptureFixture
) -> None:
    answers, client = answering
    answers.history_events = ["view"]
    with caplog.at_level(logging.WARNING, logger="inference_server.feature_client"):
        first, second = client.get_user("u1", 10), client.get_user("u2", 10)
    assert first.history == second.history == ("a", "b")
    assert first.history_events == second.history_events == ()
    assert [r.getMessage() for r in caplog.records] == [
        f"feature service at {client.target} answered 1 event kinds for 2 history events: "
        "reading such histories as having no kinds"
    ]
    answers.history_events = ["view", ""]
    assert client.get_user("u1", 10).history_events == ("view", "")


def test_core_names_the_event_field(artifact_dir: Path) -> None:
    core = FeatureServiceCore(MemoryStore(), SCHEMA.contract())
    with pytest.raises(InvalidArgument, match=r"interactions\[0\]: event holds a control character"):
        core.record_interactions([Event("u1", "a", 1, "", "\x00")])
