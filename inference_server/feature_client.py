"""Client of the feature service, as the inference server sees it.

Every answer names the schema hash the feature service serves under; a client built with
`expected_schema_hash` (the model's) refuses features of any other schema with
`FailedPrecondition`, so a model never scores features encoded for another one. With
`security` the channel uses TLS (mutual TLS with a client certificate) and sends a bearer token
(`recsys.security`); a refused token shows as UNAVAILABLE naming the feature service, like any
other reason it cannot answer.

Deadlines: each call waits at most `timeout_s`, or the `timeout_s` the caller passes (the
inference server passes what is left of its own request's deadline). The request id of the call
being served (`recsys.logs.REQUEST_ID`) goes along as `x-request-id` metadata.

Combining (`combine_users`, on by default): user look-ups made by concurrent threads while a
look-up is in flight are gathered into one GetUserFeatures call (inference_server/combine.py),
so a loaded server makes one round trip per batch of requests, not one per request; a lone
request is sent at once, exactly as without combining. A combined call carries the request id
of the request that sent it and waits as long as the most patient request in it allows; every
other request in it still gives up at its own deadline (the sender waits for its call). One bad id in a combined call fails only its own
request: the batch is retried one user at a time. `on_call(method,
seconds, code)`, when set, hears about every call (the server's metrics).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from inference_server.combine import Combiner
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
# Most users per combined GetUserFeatures call.
USER_BATCH = 64


@dataclass(frozen=True)
class _UserAsk:
    user_id: str
    max_history: int
    deadline: float  # time.monotonic() by which the asker wants its answer


@dataclass(frozen=True)
class UserView:
    user_id: str
    found: bool
    history: tuple[str, ...]  # item ids, oldest first
    features: dict[str, Any] = field(default_factory=dict)  # plain values (recsys.feature_values)
    # Derived arrays computed once per request by whoever reads this view (the pipeline's item
    # tokens of `history`, keyed by the item index that encoded them); not part of its value.
    derived: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)


class FeatureClient:
    def __init__(
        self,
        target: str,
        *,
        timeout_s: float = 1.0,
        expected_schema_hash: str | None = None,
        security: ClientSecurity | None = None,
        combine_users: bool = True,
    ):
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
        self.users = Combiner(self._fetch_users, max_batch=USER_BATCH) if combine_users else None

    def get_user(self, user_id: str, max_history: int, *, timeout_s: float | None = None) -> UserView:
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        ask = _UserAsk(user_id, max_history, time.monotonic() + timeout_s)
        if self.users is None:
            view = self._fetch_users([ask])[0]
            if isinstance(view, Exception):
                raise view
            return view
        try:
            view = self.users.call(ask, timeout_s)
        except TimeoutError:
            raise Unavailable(
                f"feature service at {self.target} did not answer within {timeout_s * 1000:.0f} ms"
            ) from None
        return view

    def _fetch_users(self, asks: list[_UserAsk]) -> list[UserView | Exception]:
        """One GetUserFeatures call per distinct `max_history` among `asks` (one, in practice)."""
        views: list[UserView | Exception | None] = [None] * len(asks)
        groups: dict[int, list[int]] = {}
        for n, ask in enumerate(asks):
            groups.setdefault(ask.max_history, []).append(n)
        for max_history, members in groups.items():
            try:
                fetched = self._get_users([asks[n] for n in members], max_history)
            except InvalidArgument as exc:
                if len(members) == 1:
                    fetched = [exc]
                else:  # one bad id must not fail the others: ask one at a time
                    fetched = [self._fetch_users([asks[n]])[0] for n in members]
            for n, view in zip(members, fetched):
                views[n] = view
        return views

    def _get_users(self, asks: list[_UserAsk], max_history: int) -> list[UserView]:
        request = features_pb2.GetUserFeaturesRequest(user_ids=[a.user_id for a in asks], max_history=max_history)
        wait_s = max(0.001, max(a.deadline for a in asks) - time.monotonic())
        response = self._call(self.stub.GetUserFeatures, request, wait_s)
        self._check_schema(response.schema_hash)
        if len(response.users) != len(asks):
            raise Unavailable(f"feature service at {self.target} answered {len(response.users)} users for {len(asks)}")
        return [UserView(u.user_id, u.found, tuple(u.history), from_proto_map(u.features)) for u in response.users]

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
            raise Unavailable(f"feature service at {self.target} is unavailable ({code.name}: {details})") from None

    def close(self) -> None:
        self.channel.close()
