"""The feature service's domain object: validates requests, calls the store, maps its failures.

No gRPC here: `FeatureServiceCore` takes and returns plain values (`Event`, `UserRecord`,
`ItemRecord`) and raises the shared error tree (`recsys.errors`), which the server's
interceptor turns into status codes. Requests are validated whole before the store is called,
so a rejected batch writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from feature_service.loader import check_event_kind, check_features, stored_contract
from feature_service.stores.base import Event, ItemRecord, Store, StoreUnavailable, UserRecord
from recsys.errors import InvalidArgument, Unavailable
from recsys.schema import FeatureContract, FeatureKind

__all__ = ["MAX_ID_CHARS", "MAX_TIMESTAMP", "MAX_VALUE_CHARS", "MAX_VALUES", "FeatureServiceCore"]

MAX_ID_CHARS = 256
# Bounds on one feature value in an update (a row is stored and served whole on every read).
MAX_VALUE_CHARS = 10_000  # characters of a categorical or text value, and of each multi-valued entry
MAX_VALUES = 1_000  # entries of a multi-valued feature
# Stores keep timestamps exactly up to 2**53 (Redis sorts them as doubles).
MAX_TIMESTAMP = 2**53


class FeatureServiceCore:
    """Serves raw features under the store's feature contract.

    The contract grows while the service runs (`refresh_contract`, called by the server's
    store watcher, picks up what a load into the same store added); rows are checked against
    it. `max_history_default` is what `max_history = 0` means (the contract's `max_history`
    unless given); `max_history_limit` is the most a request gets (larger requests are capped, not
    refused): the inference server asks for more than the model reads, to exclude seen items.
    `max_batch` bounds the ids or events of one request.
    """

    def __init__(
        self,
        store: Store,
        contract: FeatureContract,
        max_history_default: int | None = None,
        max_batch: int = 1000,
        max_history_limit: int = 1000,
    ) -> None:
        self.store = store
        self.max_history_default = contract.max_history if max_history_default is None else max_history_default
        if self.max_history_default < 0:
            raise ValueError(f"max_history_default must be >= 0, got {self.max_history_default}")
        self.max_history_limit = max(max_history_limit, self.max_history_default)
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.max_batch = max_batch
        # Kinds by name, shared with the servicer's renderers and updated in place: a feature
        # keeps its kind for good, so entries are only ever added or removed.
        self.user_kinds: dict[str, FeatureKind] = {}
        self.item_kinds: dict[str, FeatureKind] = {}
        self._on_close: list[Callable[[], None]] = []
        self.set_contract(contract)

    def set_contract(self, contract: FeatureContract) -> None:
        """Serves under `contract` from now on (every answer names its hash)."""
        for kinds, new in ((self.user_kinds, contract.user), (self.item_kinds, contract.item)):
            kinds.update(new)
            for gone in set(kinds) - set(new):
                kinds.pop(gone, None)
        self.contract = contract
        self.contract_hash = contract.hash  # named by every answer: computed once per contract

    def refresh_contract(self) -> bool:
        """Reads the store's contract again; returns whether it changed."""
        with self._store_call():
            contract = stored_contract(self.store, required=False)
        if contract is None or contract.hash == self.contract_hash:
            return False
        self.set_contract(contract)
        return True

    def get_user_features(self, user_ids: Sequence[str], max_history: int = 0) -> list[UserRecord | None]:
        """One record per id in request order, `None` for unknown users.

        History: the last `max_history` events, oldest first; 0 means `max_history_default`,
        values above `max_history_limit` are capped at it, negative ones are refused.
        """
        self._check_ids("user_ids", user_ids)
        if max_history < 0:
            raise InvalidArgument(f"max_history must be >= 0 (0 means the default), got {max_history}")
        limit = min(max_history or self.max_history_default, self.max_history_limit)
        with self._store_call():
            return self.store.get_users(list(user_ids), limit)

    def get_item_features(self, item_ids: Sequence[str]) -> list[ItemRecord | None]:
        """One record per id in request order, `None` for unknown items."""
        self._check_ids("item_ids", item_ids)
        with self._store_call():
            return self.store.get_items(list(item_ids))

    def record_interactions(self, events: Sequence[Event]) -> tuple[int, int]:
        """Appends events to users' histories; returns `(recorded, duplicates)`.

        The whole batch is checked first (non-empty ids of at most 256 characters, timestamp
        > 0, a kind of at most 64 characters without control characters); one bad event
        rejects the batch, naming its index and field, and nothing is written.
        """
        if not events:
            raise InvalidArgument("interactions is empty")
        if len(events) > self.max_batch:
            raise InvalidArgument(f"interactions has {len(events)} events; at most {self.max_batch} per request")
        for i, e in enumerate(events):
            for name, value in (("user_id", e.user_id), ("item_id", e.item_id)):
                if not value:
                    raise InvalidArgument(f"interactions[{i}]: {name} is empty")
                if len(value) > MAX_ID_CHARS:
                    raise InvalidArgument(f"interactions[{i}]: {name} is longer than {MAX_ID_CHARS} characters")
            if len(e.event_id) > MAX_ID_CHARS:
                raise InvalidArgument(f"interactions[{i}]: event_id is longer than {MAX_ID_CHARS} characters")
            if e.kind and (problem := check_event_kind(e.kind)) is not None:
                raise InvalidArgument(f"interactions[{i}]: event {problem}")
            if not 0 < e.timestamp <= MAX_TIMESTAMP:
                raise InvalidArgument(
                    f"interactions[{i}]: timestamp must be > 0 and <= 2**53 (unix seconds), got {e.timestamp}"
                )
        with self._store_call():
            return self.store.append_events(list(events))

    def update_user_features(self, rows: Sequence[tuple[str, dict[str, Any]]]) -> int:
        """Replaces users' feature rows (features absent from a row are removed); returns how
        many changed. Every row is checked against the schema (and `MAX_VALUE_CHARS`,
        `MAX_VALUES`) first: one bad row rejects the batch, naming its index, and nothing is
        written. A user's events are kept."""
        self._check_rows("rows", rows, self.user_kinds)
        with self._store_call():
            return self.store.put_users(list(rows))

    def update_item_features(self, rows: Sequence[tuple[str, dict[str, Any]]]) -> int:
        """Replaces items' feature rows; as `update_user_features`."""
        self._check_rows("rows", rows, self.item_kinds)
        with self._store_call():
            return self.store.put_items(list(rows))

    def forget_user(self, user_id: str) -> bool:
        """Deletes everything held about the user and records its tombstone; returns whether
        anything was held. Idempotent."""
        if not user_id:
            raise InvalidArgument("user_id is empty")
        if len(user_id) > MAX_ID_CHARS:
            raise InvalidArgument(f"user_id is longer than {MAX_ID_CHARS} characters")
        with self._store_call():
            return self.store.forget_user(user_id)

    def ping(self) -> None:
        """Returns when the store answers; `Unavailable` otherwise."""
        with self._store_call():
            self.store.ping()

    def on_close(self, callback: Callable[[], None]) -> None:
        """Runs `callback` when the core closes (the server's store watcher stops there)."""
        self._on_close.append(callback)

    def close(self) -> None:
        for callback in self._on_close:
            callback()
        self.store.close()

    def _check_rows(self, field: str, rows: Sequence[tuple[str, dict[str, Any]]], kinds: dict) -> None:
        self._check_ids(field, [key for key, _ in rows])
        for i, (_, features) in enumerate(rows):
            check_features(features, kinds, f"{field}[{i}]", InvalidArgument)
            for name, value in features.items():
                values = value if isinstance(value, list) else [value]
                if len(values) > MAX_VALUES:
                    raise InvalidArgument(
                        f"{field}[{i}]: feature {name!r} has {len(values)} values; at most {MAX_VALUES}"
                    )
                if any(isinstance(v, str) and len(v) > MAX_VALUE_CHARS for v in values):
                    raise InvalidArgument(
                        f"{field}[{i}]: feature {name!r} has a value longer than {MAX_VALUE_CHARS} characters"
                    )

    def _check_ids(self, field: str, ids: Sequence[str]) -> None:
        if not ids:
            raise InvalidArgument(f"{field} is empty")
        if len(ids) > self.max_batch:
            raise InvalidArgument(f"{field} has {len(ids)} ids; at most {self.max_batch} per request")
        for i, value in enumerate(ids):
            if not value:
                raise InvalidArgument(f"{field}[{i}] is empty")
            if len(value) > MAX_ID_CHARS:
                raise InvalidArgument(f"{field}[{i}] is longer than {MAX_ID_CHARS} characters")

    @contextmanager
    def _store_call(self) -> Iterator[None]:
        """The one place store failures become UNAVAILABLE (clients may retry those)."""
        try:
            yield
        except StoreUnavailable as exc:
            raise Unavailable(f"feature store unavailable: {exc}") from exc
