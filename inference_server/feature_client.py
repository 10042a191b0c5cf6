"""Client of the feature service, as the inference server sees it.

Every answer names the hash of the raw feature contract the feature service serves under; the
client keeps the last contract it asked for (`contract_of` asks `GetSchema` again for a hash it
does not know), and each model checks against it that every raw feature it reads is served
with the kind it reads (`check_compatible`, `SchemaMismatch`): the store may grow (new items,
users, features) under a running model, never lose what it reads. With
`security` the channel uses TLS (mutual TLS with a client certificate) and sends a bearer token
(`recsys.security`); a refused token shows as UNAVAILABLE naming the feature service, like any
other reason it cannot answer.

Connections: `channels` distinct connections to `target` (default `CHANNELS`), calls taken
round-robin, so a feature service started with --processes N (workers sharing one port, each
connection served by one of them) gets look-ups on several workers, not one. Each channel
reconnects on its own and spreads its calls over every address `target` resolves to.

Deadlines: each call waits at most `timeout_s`, or the `timeout_s` the caller passes (the
inference server passes what is left of its own request's deadline). The request id of the call
being served (`recsys.logs.REQUEST_ID`) goes along as `x-request-id` metadata.

Message sizes: the channel accepts answers up to `max_message_bytes` (the server's own limit),
and look-ups are sized to fit it: users per call from the history length asked for, items per
call from the bytes per item seen so far. An answer that is still too large is asked again in
halves; one user or item that alone exceeds the limit is reported (`oversize`, a WARNING) and
treated as unavailable (the request degrades) or unknown (an item), never as a crash.

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

import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import grpc

from inference_server.combine import Combiner
from recsys.errors import FailedPrecondition, InvalidArgument, ResourceExhausted, Unavailable
from recsys.feature_values import from_proto_map
from recsys.logs import REQUEST_ID, REQUEST_ID_HEADER
from recsys.schema import FeatureContract
from recsys.security import ClientSecurity, open_channel
from recsys.v1 import features_pb2, features_pb2_grpc

__all__ = ["CHANNELS", "ITEM_BATCH", "FeatureClient", "SchemaMismatch", "UserView"]

log = logging.getLogger(__name__)


class SchemaMismatch(FailedPrecondition):
    """The feature service does not serve a raw feature the model reads (or serves it with
    another kind)."""

    def __init__(self, target: str, problems: list[str]) -> None:
        super().__init__(
            f"the feature service at {target} cannot feed this model: {'; '.join(problems)}. Load this "
            "model's artifact into its store (recsys features load --artifact DIR --store URL) or serve a "
            "model that reads what it serves"
        )
        self.problems = problems


# Ids per GetItemFeatures call: the feature service's per-request maximum.
ITEM_BATCH = 1000
# Most users per combined GetUserFeatures call.
USER_BATCH = 64
# What one answered history event may take on the wire (an id of up to 256 characters, its
# timestamp, field tags), and an allowance for a user's feature row, to size user look-ups.
EVENT_BYTES = 256 + 16
USER_ROW_BYTES = 64 * 1024
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# Connections to the feature service, used in turn: enough to reach a few of its workers.
CHANNELS = 2


class _TooLarge(ResourceExhausted):
    """The answer exceeded the channel's receive limit (asked again in smaller parts)."""


class _UserAsk(NamedTuple):
    user_id: str
    max_history: int
    deadline: float  # time.monotonic() by which the asker wants its answer


@dataclass(frozen=True)
class UserView:
    user_id: str
    found: bool
    history: tuple[str, ...]  # item ids, oldest first
    features: dict[str, Any] = field(default_factory=dict)  # plain values (recsys.feature_values)
    contract_hash: str = ""  # of the feature contract the answer was served under; "" when built locally
    # Event kinds aligned with `history` ("" for an event without one); () when none is known:
    # none of the events has a kind, the feature service is older than kinds, or a local view.
    history_events: tuple[str, ...] = ()
    # Derived arrays computed once per request by whoever reads this view (the pipeline's item
    # tokens of `history`, keyed by the item index that encoded them); not part of its value.
    derived: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)


class FeatureClient:
    def __init__(
        self,
        target: str,
        *,
        timeout_s: float = 1.0,
        security: ClientSecurity | None = None,
        combine_users: bool = True,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        channels: int = CHANNELS,
    ):
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        self.target = target
        self.name = f"feature service at {target}"
        self.timeout_s = timeout_s
        self.max_message_bytes = max_message_bytes
        # Reconnect within a second of the feature service coming back (gRPC's default backoff
        # grows to two minutes, which would keep the inference server failing long after).
        options = [
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
            ("grpc.max_receive_message_length", max_message_bytes),
            # Spread calls, not connections: with a target that resolves to several
            # addresses (dns:/// over a headless Service) every one gets a subchannel.
            ("grpc.lb_policy_name", "round_robin"),
        ]
        # A channel argument of its own per channel, so each gets its own connections: gRPC
        # shares one connection among channels whose arguments are the same. (A local
        # subchannel pool would too, but grpcio can crash at exit on such a channel left open.)
        self.channels = [
            open_channel(target, security, options=[*options, ("recsys.feature_channel", n)]) for n in range(channels)
        ]
        self._stubs = [features_pb2_grpc.FeatureServiceStub(c) for c in self.channels]
        self.channel, self.stub = self.channels[0], self._stubs[0]
        self._turn = itertools.count()  # next() is atomic under the GIL: no lock per call
        self.on_call: Callable[[str, float, str], None] | None = None
        # `on_oversize(what, n)` hears about users or items whose answer alone exceeds the limit.
        self.on_oversize: Callable[[str, int], None] | None = None
        self.users = Combiner(self._fetch_users, max_batch=USER_BATCH) if combine_users else None
        self._contract: FeatureContract | None = None
        self._contract_lock = threading.Lock()
        self._item_bytes = 0.0  # bytes per item answered so far (running mean), to size item calls
        self._warned_kinds = False  # a misaligned history_events answer was reported (once per client)

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
        max_history = asks[0].max_history
        if all(a.max_history == max_history for a in asks):  # the usual case: one call, no regrouping
            try:
                return self._get_users_sized(asks, max_history)
            except InvalidArgument as exc:
                if len(asks) == 1:
                    return [exc]
                return [self._fetch_users([a])[0] for a in asks]  # one bad id must not fail the others
        views: list[UserView | Exception | None] = [None] * len(asks)
        groups: dict[int, list[int]] = {}
        for n, ask in enumerate(asks):
            groups.setdefault(ask.max_history, []).append(n)
        for max_history, members in groups.items():
            try:
                fetched = self._get_users_sized([asks[n] for n in members], max_history)
            except InvalidArgument as exc:
                if len(members) == 1:
                    fetched = [exc]
                else:  # one bad id must not fail the others: ask one at a time
                    fetched = [self._fetch_users([asks[n]])[0] for n in members]
            for n, view in zip(members, fetched):
                views[n] = view
        return views

    def _get_users_sized(self, asks: list[_UserAsk], max_history: int) -> list[UserView | Exception]:
        """`_get_users` in calls whose answers fit the receive limit: sized from `max_history`
        first, halved when an answer is still too large; a single user too large to answer
        comes back as `Unavailable` (its request degrades)."""
        per_user = max(1, max_history) * EVENT_BYTES + USER_ROW_BYTES
        step = max(1, min(len(asks), self.max_message_bytes // per_user))
        if step >= len(asks):  # fits one call: no chunking unless the answer proves too large
            try:
                return self._get_users(asks, max_history)
            except _TooLarge:
                if len(asks) == 1:
                    return [self._too_large_user()]
                step = len(asks) // 2
        out: list[UserView | Exception] = []
        pending = [asks[i : i + step] for i in range(0, len(asks), step)]
        while pending:
            chunk = pending.pop(0)
            try:
                out.extend(self._get_users(chunk, max_history))
            except _TooLarge:
                if len(chunk) > 1:
                    half = len(chunk) // 2
                    pending[:0] = [chunk[:half], chunk[half:]]
                    continue
                out.append(self._too_large_user())
        return out

    def _too_large_user(self) -> Unavailable:
        self._oversize("user", 1)
        return Unavailable(
            f"feature service at {self.target}: the answer for one user exceeds "
            f"{self.max_message_bytes} bytes (raise --max-message-mb or shorten its history)"
        )

    def _get_users(self, asks: list[_UserAsk], max_history: int) -> list[UserView]:
        if len(asks) == 1:
            ask = asks[0]
            request = features_pb2.GetUserFeaturesRequest(user_ids=(ask.user_id,), max_history=max_history)
            deadline = ask.deadline
        else:
            request = features_pb2.GetUserFeaturesRequest(user_ids=[a.user_id for a in asks], max_history=max_history)
            deadline = max(a.deadline for a in asks)
        response = self._call(self._next_stub().GetUserFeatures, request, max(0.001, deadline - time.monotonic()))
        users = response.users
        if len(users) != len(asks):
            raise Unavailable(f"feature service at {self.target} answered {len(users)} users for {len(asks)}")
        schema_hash = response.schema_hash
        return [
            UserView(
                u.user_id,
                u.found,
                tuple(u.history),
                from_proto_map(u.features) if u.features else {},
                schema_hash,
                self._kinds(u),
            )
            for u in users
        ]

    def _kinds(self, user: features_pb2.UserFeatures) -> tuple[str, ...]:
        """`history_events` of an answer, or () when it is not aligned with `history`: none
        (a service older than kinds) or, from a faulty service, another length (one WARNING
        per client, then read as no kinds rather than kinds on the wrong events)."""
        kinds = user.history_events
        if len(kinds) == len(user.history):
            return tuple(kinds)
        if kinds and not self._warned_kinds:
            self._warned_kinds = True
            log.warning(
                "feature service at %s answered %d event kinds for %d history events: "
                "reading such histories as having no kinds",
                self.target,
                len(kinds),
                len(user.history),
            )
        return ()

    def get_items(self, item_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Features (plain values) of the items the feature service knows, by id; unknown ids
        are left out. Asks at most `ITEM_BATCH` ids per call, fewer when the items seen so far
        say a full batch would not fit the receive limit; an item whose answer alone does not
        fit is left out and reported (`on_oversize`)."""
        found: dict[str, dict[str, Any]] = {}
        ids = list(item_ids)
        start = 0
        while start < len(ids):
            fit = int(self.max_message_bytes / 2 / self._item_bytes) if self._item_bytes else ITEM_BATCH
            chunk = ids[start : start + max(1, min(ITEM_BATCH, fit))]
            while True:
                try:
                    response = self._call(
                        self._next_stub().GetItemFeatures, features_pb2.GetItemFeaturesRequest(item_ids=chunk)
                    )
                    break
                except _TooLarge:
                    if len(chunk) == 1:
                        self._oversize("item", 1)
                        response = None
                        break
                    chunk = chunk[: len(chunk) // 2]
            start += len(chunk)
            if response is None:
                continue
            per_item = response.ByteSize() / len(chunk)
            self._item_bytes = per_item if not self._item_bytes else max(per_item, 0.8 * self._item_bytes)
            found.update((i.item_id, from_proto_map(i.features)) for i in response.items if i.found)
        return found

    def contract(self) -> FeatureContract:
        """The raw feature contract the feature service serves now (asks it)."""
        response = self._call(self._next_stub().GetSchema, features_pb2.GetSchemaRequest())
        contract = FeatureContract.from_json(response.schema_json)
        with self._contract_lock:
            self._contract = contract
        return contract

    def contract_of(self, contract_hash: str) -> FeatureContract:
        """The contract an answer named by its hash: the one known, or asked for again."""
        known = self._contract
        if known is not None and known.hash == contract_hash:
            return known
        return self.contract()

    def check_compatible(self, needs: FeatureContract) -> None:
        """Asks the feature service for its contract: `SchemaMismatch` when it does not serve
        what `needs` lists, `Unavailable` when it cannot be asked."""
        problems = self.contract().problems(needs)
        if problems:
            raise SchemaMismatch(self.target, problems)

    def _oversize(self, what: str, n: int) -> None:
        log.warning(
            "feature service at %s: %d %s answer(s) exceed %d bytes", self.target, n, what, self.max_message_bytes
        )
        if self.on_oversize is not None:
            self.on_oversize(what, n)

    def _next_stub(self) -> features_pb2_grpc.FeatureServiceStub:
        stubs = self._stubs
        return stubs[next(self._turn) % len(stubs)]

    def _call(self, method, request, timeout_s: float | None = None):
        request_id = REQUEST_ID.get()
        metadata = ((REQUEST_ID_HEADER, request_id),) if request_id else None
        start = time.perf_counter()
        try:
            response = method(request, timeout=self.timeout_s if timeout_s is None else timeout_s, metadata=metadata)
            if self.on_call is not None:
                self.on_call(_method_name(request), time.perf_counter() - start, "OK")
            return response
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details()
            if self.on_call is not None:
                self.on_call(_method_name(request), time.perf_counter() - start, code.name)
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "message larger than max" in (details or "").lower():
                raise _TooLarge(details) from None
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
        for channel in self.channels:
            channel.close()


_METHOD_NAMES: dict[type, str] = {}


def _method_name(request) -> str:
    """The RPC a request message is for ("GetUserFeatures"), as the metrics label it."""
    kind = type(request)
    name = _METHOD_NAMES.get(kind)
    if name is None:
        name = _METHOD_NAMES[kind] = kind.__name__.removesuffix("Request")
    return name
