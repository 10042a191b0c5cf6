"""A real feature server on port 0, called over a real channel."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from grpc_health.v1 import health_pb2, health_pb2_grpc

from feature_service.config import FeatureServiceConfig
from feature_service.server import create_feature_server, start_server
from feature_service.service import FeatureServiceCore
from recsys.errors import FailedPrecondition
from recsys.feature_values import from_proto_map
from recsys.schema import FeatureSchema
from recsys.v1 import features_pb2, features_pb2_grpc, types_pb2

from .conftest import RedisServer


def store_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if backend == "redis":
        return f"{request.getfixturevalue('redis_url')}?prefix={request.getfixturevalue('redis_prefix')}"
    return "memory://" if backend == "memory" else f"sqlite://{tmp_path}/features.db"


@pytest.fixture(params=["memory", "sqlite", "redis"])
def served(
    request: pytest.FixtureRequest, artifact_dir: Path, tmp_path: Path
) -> Iterator[tuple[int, FeatureServiceCore]]:
    url = store_url(request.param, request, tmp_path)
    server, port, _health, core = create_feature_server(artifact_dir, url, host="127.0.0.1", max_workers=4)
    yield port, core
    server.stop(None)
    core.close()


@pytest.fixture
def channel(served: tuple[int, FeatureServiceCore]) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{served[0]}") as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.Channel) -> features_pb2_grpc.FeatureServiceStub:
    return features_pb2_grpc.FeatureServiceStub(channel)


def test_health_is_serving(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "recsys.v1.FeatureService"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_get_user_features(stub: features_pb2_grpc.FeatureServiceStub, schema: FeatureSchema) -> None:
    reply = stub.GetUserFeatures(features_pb2.GetUserFeaturesRequest(user_ids=["u1", "nobody", "u2", "u3"]), timeout=5)
    assert reply.schema_hash == schema.contract().hash
    u1, nobody, u2, u3 = reply.users
    assert (u1.user_id, u1.found, nobody.user_id, nobody.found) == ("u1", True, "nobody", False)
    assert list(u1.history) == ["i2", "i3", "i4"]  # schema max_history = 3, most recent last
    assert list(u1.history_timestamps) == [200, 300, 400]
    assert from_proto_map(u1.features) == {"age": 24.0, "gender": "M"}
    assert u1.features["gender"].WhichOneof("value") == "category" and u1.updated_at > 0
    assert u2.found and list(u2.history) == ["i2"] and dict(u2.features) == {}  # events only
    assert u3.found and list(u3.history) == [] and u3.features["age"].number == 53.5  # features only

    short = stub.GetUserFeatures(features_pb2.GetUserFeaturesRequest(user_ids=["u1"], max_history=1), timeout=5)
    assert list(short.users[0].history) == ["i4"]
    capped = stub.GetUserFeatures(features_pb2.GetUserFeaturesRequest(user_ids=["u1"], max_history=99), timeout=5)
    assert list(capped.users[0].history) == ["i1", "i2", "i3", "i4"]  # more than the model reads


def test_get_item_features_sends_text_as_text(
    stub: features_pb2_grpc.FeatureServiceStub, schema: FeatureSchema
) -> None:
    reply = stub.GetItemFeatures(features_pb2.GetItemFeaturesRequest(item_ids=["i4", "i9", "i3"]), timeout=5)
    assert reply.schema_hash == schema.contract().hash
    i4, i9, i3 = reply.items
    assert i4.found and not i9.found and i9.item_id == "i9"
    assert i4.features["title"] == types_pb2.FeatureValue(text="Get Shorty (1995)")
    assert list(i4.features["genres"].categories.values) == ["Action", "Comedy", "Drama"]
    assert i3.features["genres"].WhichOneof("value") == "categories" and not i3.features["genres"].categories.values


def test_recorded_event_appears_in_next_read(stub: features_pb2_grpc.FeatureServiceStub) -> None:
    events = [
        types_pb2.Interaction(user_id="u1", item_id="i1", timestamp=500, event_id="click-1"),
        types_pb2.Interaction(user_id="new", item_id="i3", timestamp=10),
    ]
    reply = stub.RecordInteractions(features_pb2.RecordInteractionsRequest(interactions=events), timeout=5)
    assert (reply.recorded, reply.duplicates) == (2, 0)
    again = stub.RecordInteractions(features_pb2.RecordInteractionsRequest(interactions=events), timeout=5)
    assert (again.recorded, again.duplicates) == (0, 2)
    users = stub.GetUserFeatures(features_pb2.GetUserFeaturesRequest(user_ids=["u1", "new"]), timeout=5).users
    assert list(users[0].history) == ["i3", "i4", "i1"] and users[0].history_timestamps[-1] == 500
    assert users[1].found and list(users[1].history) == ["i3"]


def test_get_schema(stub: features_pb2_grpc.FeatureServiceStub, schema: FeatureSchema) -> None:
    reply = stub.GetSchema(features_pb2.GetSchemaRequest(), timeout=5)
    assert reply.schema_hash == schema.contract().hash
    assert json.loads(reply.schema_json) == schema.contract().to_dict()


@pytest.mark.parametrize(
    ("call", "request_", "message"),
    [
        ("GetUserFeatures", features_pb2.GetUserFeaturesRequest(), "user_ids is empty"),
        ("GetUserFeatures", features_pb2.GetUserFeaturesRequest(user_ids=["u1", ""]), r"user_ids\[1\] is empty"),
        ("GetUserFeatures", features_pb2.GetUserFeaturesRequest(user_ids=["x" * 257]), "longer than 256"),
        ("GetUserFeatures", features_pb2.GetUserFeaturesRequest(user_ids=["u"] * 1001), "at most 1000"),
        ("GetUserFeatures", features_pb2.GetUserFeaturesRequest(user_ids=["u1"], max_history=-1), "max_history"),
        ("GetItemFeatures", features_pb2.GetItemFeaturesRequest(item_ids=[""]), r"item_ids\[0\] is empty"),
        ("RecordInteractions", features_pb2.RecordInteractionsRequest(), "interactions is empty"),
        (
            "RecordInteractions",
            features_pb2.RecordInteractionsRequest(
                interactions=[
                    types_pb2.Interaction(user_id="u1", item_id="i1", timestamp=900),
                    types_pb2.Interaction(user_id="u1", item_id="i2", timestamp=0),
                ]
            ),
            r"interactions\[1\]: timestamp must be > 0",
        ),
        (
            "RecordInteractions",
            features_pb2.RecordInteractionsRequest(interactions=[types_pb2.Interaction(user_id="u1", timestamp=9)]),
            r"interactions\[0\]: item_id is empty",
        ),
    ],
    ids=[
        "no-users",
        "empty-user",
        "long-id",
        "too-many",
        "negative-history",
        "empty-item",
        "no-events",
        "bad-timestamp",
        "no-item-id",
    ],
)
def test_bad_input_is_invalid_argument(
    stub: features_pb2_grpc.FeatureServiceStub, call: str, request_: object, message: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        getattr(stub, call)(request_, timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert re.search(message, info.value.details()), info.value.details()
    # A rejected batch writes nothing: the good first event is not recorded either.
    users = stub.GetUserFeatures(features_pb2.GetUserFeaturesRequest(user_ids=["u1"]), timeout=5).users
    assert list(users[0].history_timestamps) == [200, 300, 400]


def test_store_failure_is_unavailable(
    stub: features_pb2_grpc.FeatureServiceStub, served: tuple[int, FeatureServiceCore]
) -> None:
    served[1].close()
    with pytest.raises(grpc.RpcError) as info:
        stub.GetUserFeatures(features_pb2.GetUserFeaturesRequest(user_ids=["u1"]), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert info.value.details().startswith("feature store unavailable: ")


def test_update_features_replaces_rows(stub: features_pb2_grpc.FeatureServiceStub) -> None:
    rows = [
        features_pb2.FeatureRow(id="u1", features={"age": types_pb2.FeatureValue(number=25)}),
        features_pb2.FeatureRow(id="u9", features={"gender": types_pb2.FeatureValue(category="F")}),
    ]
    reply = stub.UpdateUserFeatures(features_pb2.UpdateUserFeaturesRequest(rows=rows), timeout=5)
    assert reply.updated == 2
    again = stub.UpdateUserFeatures(features_pb2.UpdateUserFeaturesRequest(rows=rows), timeout=5)
    assert again.updated == 0  # unchanged rows are not writes
    u1, u9 = stub.GetUserFeatures(features_pb2.GetUserFeaturesRequest(user_ids=["u1", "u9"]), timeout=5).users
    assert from_proto_map(u1.features) == {"age": 25.0}  # replaced: gender is gone
    assert list(u1.history) == ["i2", "i3", "i4"]  # events kept
    assert u9.found and from_proto_map(u9.features) == {"gender": "F"}

    item = features_pb2.FeatureRow(
        id="i1",
        features={
            "title": types_pb2.FeatureValue(text="Toy Story 2"),
            "genres": types_pb2.FeatureValue(categories=types_pb2.StringList(values=["Comedy"])),
        },
    )
    assert stub.UpdateItemFeatures(features_pb2.UpdateItemFeaturesRequest(rows=[item]), timeout=5).updated == 1
    (i1,) = stub.GetItemFeatures(features_pb2.GetItemFeaturesRequest(item_ids=["i1"]), timeout=5).items
    assert i1.features["title"].text == "Toy Story 2" and i1.updated_at > 0


@pytest.mark.parametrize(
    ("call", "row", "message"),
    [
        (
            "UpdateUserFeatures",
            features_pb2.FeatureRow(id="u1", features={"height": types_pb2.FeatureValue(number=1)}),
            r"rows\[1\]: feature 'height' is not in the schema",
        ),
        (
            "UpdateUserFeatures",
            features_pb2.FeatureRow(id="u1", features={"age": types_pb2.FeatureValue(category="x")}),
            r"rows\[1\]: feature 'age' is numeric",
        ),
        ("UpdateUserFeatures", features_pb2.FeatureRow(id=""), r"rows\[1\] is empty"),
        (
            "UpdateItemFeatures",
            features_pb2.FeatureRow(id="i1", features={"genres": types_pb2.FeatureValue(text="A")}),
            r"rows\[1\]: feature 'genres' is multi_categorical",
        ),
    ],
)
def test_bad_feature_rows_write_nothing(
    stub: features_pb2_grpc.FeatureServiceStub, call: str, row: features_pb2.FeatureRow, message: str
) -> None:
    good = features_pb2.FeatureRow(id="new", features={})
    request_type = getattr(features_pb2, f"{call}Request")
    with pytest.raises(grpc.RpcError) as info:
        getattr(stub, call)(request_type(rows=[good, row]), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert re.search(message, info.value.details()), info.value.details()
    users = stub.GetUserFeatures(features_pb2.GetUserFeaturesRequest(user_ids=["new"]), timeout=5).users
    items = stub.GetItemFeatures(features_pb2.GetItemFeaturesRequest(item_ids=["new"]), timeout=5).items
    assert not users[0].found and not items[0].found


def test_forget_user(stub: features_pb2_grpc.FeatureServiceStub, served: tuple[int, FeatureServiceCore]) -> None:
    assert stub.ForgetUser(features_pb2.ForgetUserRequest(user_id="u1"), timeout=5).found
    assert not stub.ForgetUser(features_pb2.ForgetUserRequest(user_id="u1"), timeout=5).found
    (u1,) = stub.GetUserFeatures(features_pb2.GetUserFeaturesRequest(user_ids=["u1"]), timeout=5).users
    assert not u1.found and not u1.history
    assert set(served[1].store.forgotten_users()) == {"u1"}
    with pytest.raises(grpc.RpcError) as info:
        stub.ForgetUser(features_pb2.ForgetUserRequest(), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_forgotten_user_stays_forgotten_across_restart_and_reload(artifact_dir: Path, tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/features.db"
    server, port, _, core = create_feature_server(artifact_dir, url, host="127.0.0.1")
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        features_pb2_grpc.FeatureServiceStub(ch).ForgetUser(features_pb2.ForgetUserRequest(user_id="u1"), timeout=5)
    server.stop(None)
    core.close()
    server, port, _, core = create_feature_server(artifact_dir, url, host="127.0.0.1")  # reloads the artifact
    try:
        assert core.store.get_users(["u1", "u2"], 10)[0] is None
        assert core.store.get_users(["u2"], 10)[0].history == ["i2"]
    finally:
        server.stop(None)
        core.close()


def test_serves_the_stored_schema_without_an_artifact(
    artifact_dir: Path, tmp_path: Path, schema: FeatureSchema
) -> None:
    url = f"sqlite://{tmp_path}/features.db"
    with pytest.raises(FailedPrecondition, match="holds no artifact: load one first"):
        create_feature_server(None, url, host="127.0.0.1")
    server, _, _, core = create_feature_server(artifact_dir, url, host="127.0.0.1")
    server.stop(None)
    core.close()
    server, port, _, core = create_feature_server(None, url, host="127.0.0.1")
    try:
        assert core.contract_hash == schema.contract().hash
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            reply = features_pb2_grpc.FeatureServiceStub(ch).GetUserFeatures(
                features_pb2.GetUserFeaturesRequest(user_ids=["u1"]), timeout=5
            )
        assert reply.schema_hash == schema.contract().hash and list(reply.users[0].history) == ["i2", "i3", "i4"]
    finally:
        server.stop(None)
        core.close()


def wait_health(channel: grpc.Channel, status: int, timeout_s: float = 5.0) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout_s
    while True:
        reply = stub.Check(health_pb2.HealthCheckRequest(service="recsys.v1.FeatureService"), timeout=5)
        if reply.status == status:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"health stayed {reply.status}, expected {status}")
        time.sleep(0.02)


def test_store_outage_is_not_serving_and_recovers_by_itself(artifact_dir: Path, redis_server: RedisServer) -> None:
    server, port, _, core = create_feature_server(
        artifact_dir, redis_server.url, host="127.0.0.1", health_interval_s=0.05
    )
    request = features_pb2.GetUserFeaturesRequest(user_ids=["u1"])
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = features_pb2_grpc.FeatureServiceStub(ch)
            wait_health(ch, health_pb2.HealthCheckResponse.SERVING)
            redis_server.kill()
            wait_health(ch, health_pb2.HealthCheckResponse.NOT_SERVING)
            with pytest.raises(grpc.RpcError) as info:
                stub.GetUserFeatures(request, timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "feature store unavailable" in info.value.details()
            redis_server.start()
            wait_health(ch, health_pb2.HealthCheckResponse.SERVING)
            assert list(stub.GetUserFeatures(request, timeout=5).users[0].history) == ["i2", "i3", "i4"]
    finally:
        server.stop(None)
        core.close()


def test_restart_over_persistent_store_loads_nothing_new(
    artifact_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, schema: FeatureSchema
) -> None:
    url = f"sqlite://{tmp_path}/features.db"
    for expected in (
        "2 users, 4 items, 5 events written (0 duplicate",
        "0 users, 0 items, 0 events written (5 duplicate",
    ):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="feature_service.server"):
            server, port, _, core = create_feature_server(artifact_dir, url, host="127.0.0.1")
        try:
            assert expected in caplog.text
            assert core.contract == schema.contract()
            with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                stub = features_pb2_grpc.FeatureServiceStub(ch)
                reply = stub.GetUserFeatures(features_pb2.GetUserFeaturesRequest(user_ids=["u1"]), timeout=5)
            assert list(reply.users[0].history) == ["i2", "i3", "i4"]
            assert core.store.get_users(["u1"], 50)[0].history == ["i1", "i2", "i3", "i4"]
        finally:
            server.stop(None)
            core.close()


def test_bad_artifact_fails_startup(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="manifest.json is missing"):
        create_feature_server(tmp_path, "memory://")


def test_servers_do_not_import_torch() -> None:
    code = "import sys, feature_service.server; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_start_server_takes_one_config(artifact_dir: Path, tmp_path: Path) -> None:
    config = FeatureServiceConfig(
        artifact_dir=artifact_dir, store_url=f"sqlite://{tmp_path}/f.db", host="127.0.0.1", port=0, max_workers=2
    )
    server, port, _, core = start_server(config)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            reply = features_pb2_grpc.FeatureServiceStub(ch).GetUserFeatures(
                features_pb2.GetUserFeaturesRequest(user_ids=["u1"]), timeout=5
            )
        assert list(reply.users[0].history) == ["i2", "i3", "i4"]
    finally:
        server.stop(None)
        core.close()


def test_serve_features_hands_the_server_one_config(artifact_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import feature_service.server
    from recsys.cli import main
    from recsys.security import ServerSecurity

    configs: list[FeatureServiceConfig] = []
    monkeypatch.setattr(feature_service.server, "serve", configs.append)
    monkeypatch.delenv("RECSYS_AUTH_TOKENS", raising=False)
    result = CliRunner().invoke(
        main,
        [
            "serve",
            "features",
            "--artifact",
            str(artifact_dir),
            "--store",
            "memory://",
            "--port",
            "0",
            "--workers",
            "3",
            "--access-log",
        ],
    )
    assert result.exit_code == 0, result.output
    assert configs == [
        FeatureServiceConfig(
            artifact_dir=str(artifact_dir),
            store_url="memory://",
            port=0,
            max_workers=3,
            access_log=True,
            security=ServerSecurity(),
            metrics_host="127.0.0.1",
        )
    ]
    args = ["serve", "features", "--max-concurrent-rpcs", "7", "--host", "127.0.0.1"]
    result = CliRunner().invoke(main, [*args, "--store", "sqlite://f.db", "--replace"])
    assert result.exit_code == 0, result.output
    assert configs[-1] == FeatureServiceConfig(
        store_url="sqlite://f.db",
        load_mode="replace",
        host="127.0.0.1",
        max_concurrent_rpcs=7,
        security=ServerSecurity(),
        metrics_host="127.0.0.1",
    )
    # no store and no artifact to put one beside: refused, not a store in the current folder
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "give --store URL" in result.output
