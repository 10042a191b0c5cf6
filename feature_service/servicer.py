"""gRPC adapter for `FeatureServiceCore`: proto -> domain call -> proto, nothing else.

Errors are raised by the core and mapped to status codes by the shared interceptor
(`recsys.errors`); this module never touches the context. Feature values go out through
`recsys.feature_values` with the schema's kinds, so text features are sent as `text` and
categorical ones as `category`. Every response names the schema hash it was served under.
"""

from __future__ import annotations

import grpc

from feature_service.service import FeatureServiceCore
from feature_service.stores.base import Event, ItemRecord, UserRecord
from recsys.feature_values import to_proto_map
from recsys.v1 import features_pb2, features_pb2_grpc

__all__ = ["SERVICE_NAME", "FeatureServicer"]

SERVICE_NAME = features_pb2.DESCRIPTOR.services_by_name["FeatureService"].full_name  # recsys.v1.FeatureService


class FeatureServicer(features_pb2_grpc.FeatureServiceServicer):
    def __init__(self, core: FeatureServiceCore) -> None:
        self._core = core

    def GetUserFeatures(
        self, request: features_pb2.GetUserFeaturesRequest, context: grpc.ServicerContext
    ) -> features_pb2.GetUserFeaturesResponse:
        records = self._core.get_user_features(list(request.user_ids), request.max_history)
        return features_pb2.GetUserFeaturesResponse(
            users=[self._user(uid, r) for uid, r in zip(request.user_ids, records)],
            schema_hash=self._core.schema_hash,
        )

    def GetItemFeatures(
        self, request: features_pb2.GetItemFeaturesRequest, context: grpc.ServicerContext
    ) -> features_pb2.GetItemFeaturesResponse:
        records = self._core.get_item_features(list(request.item_ids))
        return features_pb2.GetItemFeaturesResponse(
            items=[self._item(iid, r) for iid, r in zip(request.item_ids, records)],
            schema_hash=self._core.schema_hash,
        )

    def RecordInteractions(
        self, request: features_pb2.RecordInteractionsRequest, context: grpc.ServicerContext
    ) -> features_pb2.RecordInteractionsResponse:
        events = [Event(i.user_id, i.item_id, i.timestamp, i.event_id) for i in request.interactions]
        recorded, duplicates = self._core.record_interactions(events)
        return features_pb2.RecordInteractionsResponse(recorded=recorded, duplicates=duplicates)

    def GetSchema(
        self, request: features_pb2.GetSchemaRequest, context: grpc.ServicerContext
    ) -> features_pb2.GetSchemaResponse:
        return features_pb2.GetSchemaResponse(schema_json=self._core.schema_json, schema_hash=self._core.schema_hash)

    def _user(self, user_id: str, record: UserRecord | None) -> features_pb2.UserFeatures:
        if record is None:
            return features_pb2.UserFeatures(user_id=user_id, found=False)
        return features_pb2.UserFeatures(
            user_id=user_id,
            found=True,
            history=record.history,
            history_timestamps=record.history_timestamps,
            features=to_proto_map(record.features, self._core.user_kinds),
            updated_at=record.updated_at,
        )

    def _item(self, item_id: str, record: ItemRecord | None) -> features_pb2.ItemFeatures:
        if record is None:
            return features_pb2.ItemFeatures(item_id=item_id, found=False)
        return features_pb2.ItemFeatures(
            item_id=item_id,
            found=True,
            features=to_proto_map(record.features, self._core.item_kinds),
            updated_at=record.updated_at,
        )
