"""No training/serving skew: what the feature service serves for every user and item equals,
value for value, what the trainer used (the tokens of each training sequence, and each raw and
encoded feature), on every backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from feature_service.server import create_feature_server
from recsys.artifact import ItemIndex, read_manifest
from recsys.feature_values import from_proto_map
from recsys.schema import FIRST_TOKEN, FeatureKind, FeatureSpec
from recsys.v1 import features_pb2, features_pb2_grpc

from .test_server import store_url


def encoded(spec: FeatureSpec, value):
    if spec.kind is FeatureKind.NUMERIC:
        return spec.encode_numeric(value)
    if spec.kind is FeatureKind.CATEGORICAL:
        return spec.encode_category(value)
    if spec.kind is FeatureKind.MULTI_CATEGORICAL:
        return spec.encode_categories(value)
    return value  # TEXT is served, not encoded


@pytest.fixture(params=["memory", "sqlite", "redis"])
def stub(request, trained_artifact: Path, tmp_path: Path) -> Iterator[features_pb2_grpc.FeatureServiceStub]:
    url = store_url(request.param, request, tmp_path)
    server, port, _, core = create_feature_server(trained_artifact, url, host="127.0.0.1")
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield features_pb2_grpc.FeatureServiceStub(channel)
    server.stop(None)
    core.close()


def test_served_features_equal_what_the_trainer_used(stub, ring_data, trained_artifact: Path) -> None:
    from trainer.data.encoding import build_item_index, encode_histories
    from trainer.data.tables import feature_rows, load_tables

    # Exactly what `recsys train` computed from its inputs.
    tables = load_tables(ring_data["train"], ring_data["users"], ring_data["items"])
    index = build_item_index(tables.interactions, tables.items)
    user_ids, sequences = encode_histories(tables.interactions, index)
    schema = read_manifest(trained_artifact).schema
    assert ItemIndex.read(trained_artifact) == index
    trained_users = {r["user_id"]: r["features"] for r in feature_rows(tables.users, schema.user_features, "user_id")}
    trained_items = {r["item_id"]: r["features"] for r in feature_rows(tables.items, schema.item_features, "item_id")}
    token = {item: i + FIRST_TOKEN for i, item in enumerate(index.item_ids)}

    reply = stub.GetUserFeatures(features_pb2.GetUserFeaturesRequest(user_ids=list(trained_users), max_history=1000))
    assert reply.schema_hash == schema.contract().hash
    served = {u.user_id: u for u in reply.users}
    for uid, sequence in zip(user_ids, sequences):
        history = served[uid].history
        assert np.array_equal(np.array([token[i] for i in history], dtype=np.int64), sequence), uid
    assert len(user_ids) == len(sequences) > 0
    for uid, features in trained_users.items():
        got = from_proto_map(served[uid].features)
        assert got == features, uid
        for spec in schema.user_features:
            assert encoded(spec, got.get(spec.name)) == encoded(spec, features.get(spec.name)), (uid, spec.name)

    reply = stub.GetItemFeatures(features_pb2.GetItemFeaturesRequest(item_ids=list(trained_items)))
    for item in reply.items:
        got, features = from_proto_map(item.features), trained_items[item.item_id]
        assert item.found and got == features, item.item_id
        for spec in schema.item_features:
            assert encoded(spec, got.get(spec.name)) == encoded(spec, features.get(spec.name)), (
                item.item_id,
                spec.name,
            )
    assert len(trained_items) > 0 and {s.kind for s in schema.user_features + schema.item_features} >= {
        FeatureKind.NUMERIC,
        FeatureKind.CATEGORICAL,
        FeatureKind.MULTI_CATEGORICAL,
        FeatureKind.TEXT,
    }
