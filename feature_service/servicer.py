"""gRPC adapter for `FeatureServiceCore`: proto -> domain call -> proto, nothing else.

Errors are raised by the core and mapped to status codes by the shared interceptor
(`recsys.errors`); this module never touches the context. Feature values go out through
`recsys.feature_values` with the contract's kinds, so text features are sent as `text` and
categorical ones as `category`. Every response names the hash of the feature contract it was
served under (`schema_hash`), so a client notices a grown contract without asking. A user's
`history_events` is sent only when one of its returned events has a kind (then aligned with
`history`, "" for the others): data without kinds is answered byte for byte as before.

Speed: stores hand back each feature row as its canonical JSON text, and `FeatureBytes` turns
a text into the serialised `features` map once, then merges those bytes into each answer that
carries the same row (protobuf merges concatenated fields). Building a 100-item answer this
way takes about a tenth of the time of parsing the JSON and building the maps every call; the
answer is the same message (a test compares both).
"""

from __future__ import annotations

import json

import grpc

from feature_service.service import FeatureServiceCore
from feature_service.stores.base import Event
from recsys.feature_values import from_proto_map, to_proto_map
from recsys.schema import FeatureKind
from recsys.v1 import features_pb2, features_pb2_grpc

__all__ = ["SERVICE_NAME", "FeatureBytes", "FeatureServicer"]

SERVICE_NAME = features_pb2.DESCRIPTOR.services_by_name["FeatureService"].full_name  # recsys.v1.FeatureService


class FeatureBytes:
    """Feature-row JSON text -> serialised `message_type(features=...)`, memoised.

    At most `max_entries` texts are kept; a full memo starts again empty (rows change rarely
    compared with how often they are read, so the memo refills with the hot ones).
    """

    def __init__(self, message_type: type, kinds: dict[str, FeatureKind], max_entries: int = 50_000) -> None:
        self._message_type = message_type
        self._kinds = kinds
        self._max_entries = max_entries
        self._memo: dict[str, bytes] = {}

    def __call__(self, features_json: str) -> bytes:
        cached = self._memo.get(features_json)
        if cached is None:
            features = to_proto_map(json.loads(features_json), self._kinds)
            cached = self._message_type(features=features).SerializeToString()
            if len(self._memo) >= self._max_entries:
                self._memo.clear()
            self._memo[features_json] = cached
        return cached


class FeatureServicer(features_pb2_grpc.FeatureServiceServicer):
    def __init__(self, core: FeatureServiceCore) -> None:
        self._core = core
        self._user_features = FeatureBytes(features_pb2.UserFeatures, core.user_kinds)
        self._item_features = FeatureBytes(features_pb2.ItemFeatures, core.item_kinds)

    def GetUserFeatures(
        self, request: features_pb2.GetUserFeaturesRequest, context: grpc.ServicerContext
    ) -> features_pb2.GetUserFeaturesResponse:
        records = self._core.get_user_features(list(request.user_ids), request.max_history)
        response = features_pb2.GetUserFeaturesResponse(schema_hash=self._core.contract_hash)
        for user_id, record in zip(request.user_ids, records):
            if record is None:
                response.users.add(user_id=user_id, found=False)
                continue
            user = response.users.add(
                user_id=user_id,
                found=True,
                history=record.history,
                history_timestamps=record.history_timestamps,
                updated_at=record.updated_at,
            )
            if any(record.history_events):  # none with a kind: the answer as before kinds existed
                user.history_events.extend(record.history_events)
            user.MergeFromString(self._user_features(record.features_json))
        return response

    def GetItemFeatures(
        self, request: features_pb2.GetItemFeaturesRequest, context: grpc.ServicerContext
    ) -> features_pb2.GetItemFeaturesResponse:
        records = self._core.get_item_features(list(request.item_ids))
        response = features_pb2.GetItemFeaturesResponse(schema_hash=self._core.contract_hash)
        for item_id, record in zip(request.item_ids, records):
            if record is None:
                response.items.add(item_id=item_id, found=False)
                continue
            item = response.items.add(item_id=item_id, found=True, updated_at=record.updated_at)
            item.MergeFromString(self._item_features(record.features_json))
        return response

    def RecordInteractions(
        self, request: features_pb2.RecordInteractionsRequest, context: grpc.ServicerContext
    ) -> features_pb2.RecordInteractionsResponse:
        events = [Event(i.user_id, i.item_id, i.timestamp, i.event_id, i.event) for i in request.interactions]
        recorded, duplicates = self._core.record_interactions(events)
        return features_pb2.RecordInteractionsResponse(recorded=recorded, duplicates=duplicates)

    def UpdateUserFeatures(
        self, request: features_pb2.UpdateUserFeaturesRequest, context: grpc.ServicerContext
    ) -> features_pb2.UpdateUserFeaturesResponse:
        updated = self._core.update_user_features([(r.id, from_proto_map(r.features)) for r in request.rows])
        return features_pb2.UpdateUserFeaturesResponse(updated=updated)

    def UpdateItemFeatures(
        self, request: features_pb2.UpdateItemFeaturesRequest, context: grpc.ServicerContext
    ) -> features_pb2.UpdateItemFeaturesResponse:
        updated = self._core.update_item_features([(r.id, from_proto_map(r.features)) for r in request.rows])
        return features_pb2.UpdateItemFeaturesResponse(updated=updated)

    def ForgetUser(
        self, request: features_pb2.ForgetUserRequest, context: grpc.ServicerContext
    ) -> features_pb2.ForgetUserResponse:
        return features_pb2.ForgetUserResponse(found=self._core.forget_user(request.user_id))

    def GetSchema(
        self, request: features_pb2.GetSchemaRequest, context: grpc.ServicerContext
    ) -> features_pb2.GetSchemaResponse:
        contract = self._core.contract  # read once: json and hash of the same contract
        return features_pb2.GetSchemaResponse(schema_json=contract.to_json(), schema_hash=contract.hash)
