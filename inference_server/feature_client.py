"""Client of the feature service, as the inference server sees it.

Every answer names the schema hash the feature service serves under; a client built with
`expected_schema_hash` (the model's) refuses features of any other schema with
`FailedPrecondition`, so a model never scores features encoded for another one. With
`security` the channel uses TLS (mutual TLS with a client certificate) and sends a bearer token
(`recsys.security`); a refused token shows as UNAVAILABLE naming the feature service, like any
other reason it cannot answer.

Deadlines: each call waits at most `timeout_s`, or the `timeout_s` the caller passes (the
inference server passes what is left of its own request's deadline). The request id of the call
being served (`recsys.logs.REQUEST_ID`) goes along as `x-request-id` metadata. `on_call(method,
seconds, code)`, when set, hears about every call (the server's metrics).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from recsys.errors import FailedPrecondition, InvalidArgument, Unavailable
from recsys.feature_values import from_proto_map
from recsys.logs import REQUEST_ID, REQUEST_ID_HEADER
from recsys.security import ClientSecurity, open_channel
from recsys.v1 import features_pb2, features_pb2_grpc

__all__ = ["ITEM_BATCH", "FeatureClient", "SchemaMismatch", "UserView"]


class SchemaMismatch(FailedPrecondition):
    """The feature service serves another feature schema than the model was trained with."""

    def __init__(self, target: str, served: str, expected: str) -> None:
        super().__init__(
            f"feature schema mismatch: the feature service at {target} serves schema {served}, "
            f"the model was trained with schema {expected}; load this model's artifact into the "
            "feature store (recsys features load --artifact DIR --store URL) or serve the model "
            "that matches it"
        )
        self.served = served
        self.expected = expected


# Ids per GetItemFeatures call: the feature service's per-request maximum.
ITEM_BATCH = 1000


@dataclass(frozen=True)
class UserView:
    user_id: str
    found: bool
    history: tuple[str, ...]  # item ids, oldest first
    features: dict[str, Any] = field(default_factory=dict)  # plain values (recsys.feature_values)


class FeatureClient:
    def __init__(self, target: str, *, timeout_s: float = 1.0, expected_schema_hash: str | None = None,
                 security: ClientSecurity | None = None):
        self.target = target
        self.timeout_s = timeout_s
        self.expected_schema_hash = expected_schema_hash
        # Reconnect within a second of the feature service coming back (gRPC's default backoff
        # grows to two minutes, which would keep the inference server failing long after).
        self.channel = open_channel(
            target,
            security,
            options=[
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000),
            ],
        )
        self.stub = features_pb2_grpc.FeatureServiceStub(self.channel)
        self.on_call: Callable[[str, float, str], None] | None = None

    def get_user(self, user_id: str, max_history: int, *, timeout_s: float | None = None) -> UserView:
        request = features_pb2.GetUserFeaturesRequest(user_ids=[user_id], max_history=max_history)
        response = self._call(self.stub.GetUserFeatures, request, timeout_s)
        self._check_schema(response.schema_hash)
        user = response.users[0]
        return UserView(user.user_id, user.found, tuple(user.history), from_proto_map(user.features))

    def get_items(self, item_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Features (plain values) of the items the feature service knows, by id; unknown ids
        are left out. Asks in batches of `ITEM_BATCH`."""
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(item_ids), ITEM_BATCH):
            request = features_pb2.GetItemFeaturesRequest(item_ids=item_ids[start : start + ITEM_BATCH])
            response = self._call(self.stub.GetItemFeatures, request)
            self._check_schema(response.schema_hash)
            found.update((i.item_id, from_proto_map(i.features)) for i in response.items if i.found)
        return found

    def schema_hash(self) -> str:
        return self._call(self.stub.GetSchema, features_pb2.GetSchemaRequest()).schema_hash

    def check_schema(self) -> None:
        """Asks the feature service for its schema: `SchemaMismatch` or `Unavailable` if not ours."""
        self._check_schema(self.schema_hash())

    def _check_schema(self, served: str) -> None:
        if self.expected_schema_hash is not None and served != self.expected_schema_hash:
            raise SchemaMismatch(self.target, served, self.expected_schema_hash)

    def _call(self, method, request, timeout_s: float | None = None):
        request_id = REQUEST_ID.get()
        metadata = ((REQUEST_ID_HEADER, request_id),) if request_id else None
        start = time.perf_counter()
        try:
            response = method(request, timeout=self.timeout_s if timeout_s is None else timeout_s, metadata=metadata)
            if self.on_call is not None:
                self.on_call(type(request).__name__.removesuffix("Request"), time.perf_counter() - start, "OK")
            return response
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details()
            if self.on_call is not None:
                self.on_call(type(request).__name__.removesuffix("Request"), time.perf_counter() - start, code.name)
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidArgument(details) from None
            if code == grpc.StatusCode.FAILED_PRECONDITION:
                raise FailedPrecondition(f"feature service: {details}") from None
            if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                raise Unavailable(
                    f"feature service at {self.target} refused this server's credentials ({code.name}: {details})"
                ) from None
            raise Unavailable(
                f"feature service at {self.target} is unavailable ({code.name}: {details})"
            ) from None

    def close(self) -> None:
        self.channel.close()
