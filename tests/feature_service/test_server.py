"""A real feature server on port 0, called over a real channel."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from feature_service.server import create_feature_server
from feature_service.service import FeatureServiceCore
from recsys.errors import FailedPrecondition
from recsys.feature_values import from_proto_map
from recsys.schema import FeatureSchema
from recsys.v1 import features_pb2, features_pb2_grpc, types_pb2


@pytest.fixture(params=["memory", "sqlite"])
def served(request: pytest.FixtureRequest, artifact_dir: Path, tmp_path: Path) -> Iterator[tuple[int, FeatureServiceCore]]:
    url = "memory://" if request.param == "memory" else f"sqlite://{tmp_path}/features.db"
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
    assert reply.schema_hash == schema.hash
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


def test_get_item_features_sends_text_as_text(stub: features_pb2_grpc.FeatureServiceStub, schema: FeatureSchema) -> None:
    reply = stub.GetItemFeatures(features_pb2.GetItemFeaturesRequest(item_ids=["i4", "i9", "i3"]), timeout=5)
    assert reply.schema_hash == schema.hash
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
    assert reply.schema_hash == schema.hash
    assert json.loads(reply.schema_json) == schema.to_dict()


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
    ids=["no-users", "empty-user", "long-id", "too-many", "negative-history", "empty-item", "no-events",
         "bad-timestamp", "no-item-id"],
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


def test_restart_over_persistent_store_loads_nothing_new(
    artifact_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, schema: FeatureSchema
) -> None:
    url = f"sqlite://{tmp_path}/features.db"
    for expected in ("2 users, 4 items, 5 events written (0 duplicate", "0 users, 0 items, 0 events written (5 duplicate"):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="feature_service.server"):
            server, port, _, core = create_feature_server(artifact_dir, url, host="127.0.0.1")
        try:
            assert expected in caplog.text
            assert core.store.get_meta("artifact.schema_hash") == schema.hash
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
