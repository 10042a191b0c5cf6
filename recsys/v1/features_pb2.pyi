from recsys.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetUserFeaturesRequest(_message.Message):
    __slots__ = ("user_ids", "max_history")
    USER_IDS_FIELD_NUMBER: _ClassVar[int]
    MAX_HISTORY_FIELD_NUMBER: _ClassVar[int]
    user_ids: _containers.RepeatedScalarFieldContainer[str]
    max_history: int
    def __init__(self, user_ids: _Optional[_Iterable[str]] = ..., max_history: _Optional[int] = ...) -> None: ...

class UserFeatures(_message.Message):
    __slots__ = ("user_id", "found", "history", "history_timestamps", "features", "updated_at", "history_events")
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _types_pb2.FeatureValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_types_pb2.FeatureValue, _Mapping]] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    HISTORY_TIMESTAMPS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    HISTORY_EVENTS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    found: bool
    history: _containers.RepeatedScalarFieldContainer[str]
    history_timestamps: _containers.RepeatedScalarFieldContainer[int]
    features: _containers.MessageMap[str, _types_pb2.FeatureValue]
    updated_at: int
    history_events: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, user_id: _Optional[str] = ..., found: _Optional[bool] = ..., history: _Optional[_Iterable[str]] = ..., history_timestamps: _Optional[_Iterable[int]] = ..., features: _Optional[_Mapping[str, _types_pb2.FeatureValue]] = ..., updated_at: _Optional[int] = ..., history_events: _Optional[_Iterable[str]] = ...) -> None: ...

class GetUserFeaturesResponse(_message.Message):
    __slots__ = ("users", "schema_hash")
    USERS_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_HASH_FIELD_NUMBER: _ClassVar[int]
    users: _containers.RepeatedCompositeFieldContainer[UserFeatures]
    schema_hash: str
    def __init__(self, users: _Optional[_Iterable[_Union[UserFeatures, _Mapping]]] = ..., schema_hash: _Optional[str] = ...) -> None: ...

class GetItemFeaturesRequest(_message.Message):
    __slots__ = ("item_ids",)
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ItemFeatures(_message.Message):
    __slots__ = ("item_id", "found", "features", "updated_at")
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _types_pb2.FeatureValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_types_pb2.FeatureValue, _Mapping]] = ...) -> None: ...
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    found: bool
    features: _containers.MessageMap[str, _types_pb2.FeatureValue]
    updated_at: int
    def __init__(self, item_id: _Optional[str] = ..., found: _Optional[bool] = ..., features: _Optional[_Mapping[str, _types_pb2.FeatureValue]] = ..., updated_at: _Optional[int] = ...) -> None: ...

class GetItemFeaturesResponse(_message.Message):
    __slots__ = ("items", "schema_hash")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_HASH_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ItemFeatures]
    schema_hash: str
    def __init__(self, items: _Optional[_Iterable[_Union[ItemFeatures, _Mapping]]] = ..., schema_hash: _Optional[str] = ...) -> None: ...

class RecordInteractionsRequest(_message.Message):
    __slots__ = ("interactions",)
    INTERACTIONS_FIELD_NUMBER: _ClassVar[int]
    interactions: _containers.RepeatedCompositeFieldContainer[_types_pb2.Interaction]
    def __init__(self, interactions: _Optional[_Iterable[_Union[_types_pb2.Interaction, _Mapping]]] = ...) -> None: ...

class RecordInteractionsResponse(_message.Message):
    __slots__ = ("recorded", "duplicates")
    RECORDED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    recorded: int
    duplicates: int
    def __init__(self, recorded: _Optional[int] = ..., duplicates: _Optional[int] = ...) -> None: ...

class FeatureRow(_message.Message):
    __slots__ = ("id", "features")
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _types_pb2.FeatureValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_types_pb2.FeatureValue, _Mapping]] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    id: str
    features: _containers.MessageMap[str, _types_pb2.FeatureValue]
    def __init__(self, id: _Optional[str] = ..., features: _Optional[_Mapping[str, _types_pb2.FeatureValue]] = ...) -> None: ...

class UpdateUserFeaturesRequest(_message.Message):
    __slots__ = ("rows",)
    ROWS_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[FeatureRow]
    def __init__(self, rows: _Optional[_Iterable[_Union[FeatureRow, _Mapping]]] = ...) -> None: ...

class UpdateUserFeaturesResponse(_message.Message):
    __slots__ = ("updated",)
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    updated: int
    def __init__(self, updated: _Optional[int] = ...) -> None: ...

class UpdateItemFeaturesRequest(_message.Message):
    __slots__ = ("rows",)
    ROWS_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[FeatureRow]
    def __init__(self, rows: _Optional[_Iterable[_Union[FeatureRow, _Mapping]]] = ...) -> None: ...

class UpdateItemFeaturesResponse(_message.Message):
    __slots__ = ("updated",)
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    updated: int
    def __init__(self, updated: _Optional[int] = ...) -> None: ...

class ForgetUserRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class ForgetUserResponse(_message.Message):
    __slots__ = ("found",)
    FOUND_FIELD_NUMBER: _ClassVar[int]
    found: bool
    def __init__(self, found: _Optional[bool] = ...) -> None: ...

class GetSchemaRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetSchemaResponse(_message.Message):
    __slots__ = ("schema_json", "schema_hash")
    SCHEMA_JSON_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_HASH_FIELD_NUMBER: _ClassVar[int]
    schema_json: str
    schema_hash: str
    def __init__(self, schema_json: _Optional[str] = ..., schema_hash: _Optional[str] = ...) -> None: ...
