"""The servicer's memoised rendering gives the same messages as building them value by value."""

from __future__ import annotations

from pathlib import Path

from feature_service.loader import load_artifact
from feature_service.service import FeatureServiceCore
from feature_service.servicer import FeatureBytes, FeatureServicer
from feature_service.stores import MemoryStore
from recsys.feature_values import to_proto_map
from recsys.schema import FeatureKind, FeatureSchema
from recsys.v1 import features_pb2


def test_rendering_equals_plain_construction(artifact_dir: Path, schema: FeatureSchema) -> None:
    store = MemoryStore()
    load_artifact(store, artifact_dir)
    store.put_items([("i9", {"title": "Amélie — 日本語", "genres": []}), ("i8", {})])
    core = FeatureServiceCore(store, schema.contract())
    servicer = FeatureServicer(core)
    kinds_u = {s.name: s.kind for s in schema.user_features}
    kinds_i = {s.name: s.kind for s in schema.item_features}
    for _ in range(2):  # the second round is served from the memo
        user_ids = ["u1", "nobody", "u2", "u3", "u1"]
        got = servicer.GetUserFeatures(features_pb2.GetUserFeaturesRequest(user_ids=user_ids), None)
        want = features_pb2.GetUserFeaturesResponse(schema_hash=schema.contract().hash)
        for uid, r in zip(user_ids, store.get_users(user_ids, schema.max_history)):
            want.users.append(
                features_pb2.UserFeatures(user_id=uid, found=False)
                if r is None
                else features_pb2.UserFeatures(
                    user_id=uid,
                    found=True,
                    history=r.history,
                    history_timestamps=r.history_timestamps,
                    features=to_proto_map(r.features, kinds_u),
                    updated_at=r.updated_at,
                )
            )
        assert got == want and got.SerializeToString(deterministic=True) == want.SerializeToString(deterministic=True)

        item_ids = ["i1", "i9", "missing", "i4", "i8", "i1"]
        got = servicer.GetItemFeatures(features_pb2.GetItemFeaturesRequest(item_ids=item_ids), None)
        want = features_pb2.GetItemFeaturesResponse(schema_hash=schema.contract().hash)
        for iid, r in zip(item_ids, store.get_items(item_ids)):
            want.items.append(
                features_pb2.ItemFeatures(item_id=iid, found=False)
                if r is None
                else features_pb2.ItemFeatures(
                    item_id=iid,
                    found=True,
                    features=to_proto_map(r.features, kinds_i),
                    updated_at=r.updated_at,
                )
            )
        assert got == want
        assert got.items[1].features["title"].text == "Amélie — 日本語"


def test_memo_is_bounded() -> None:
    render = FeatureBytes(features_pb2.ItemFeatures, {"title": FeatureKind.TEXT}, max_entries=2)
    rows = ['{"title":"a"}', '{"title":"b"}', '{"title":"c"}']
    rendered = [render(r) for r in rows]
    assert len(render._memo) == 1  # emptied when full, then refilled
    assert features_pb2.ItemFeatures.FromString(rendered[2]).features["title"].text == "c"
    assert render(rows[0]) == rendered[0]
