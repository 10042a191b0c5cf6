"""Features read in the inference server's own process, straight from the online store.

`recsys serve inference --feature-store URL` (instead of `--features HOST:PORT`): the server opens
the store a feature service writes (`sqlite:///PATH` on the same machine, `redis://...`
anywhere) and reads users' histories and features and items' features itself, with no second
gRPC call per request. Writes (`RecordInteractions`, feature updates, `ForgetUser`) still go
to the feature service; its store is the single place they land, so the next request here sees
them. `memory://` cannot be shared between processes and is refused by whoever opens the store
(the CLI).

`LocalFeatures` answers what the inference server asks of `FeatureClient` (`get_user`,
`get_items`, `contract`, `contract_of`, `check_compatible`, `close`), from a `FeatureCore`: the
feature service's domain layer (`feature_service.service.FeatureServiceCore`), handed in by the
caller so this package does not import the feature service. Answers are what the gRPC path
gives: feature values as they come out of the wire format (`recsys.feature_values.as_served`),
event kinds only when some event has one, the same errors (a store that cannot answer raises
`Unavailable`, so requests degrade exactly as when the feature service is down). The contract is
read from the store again on every health round (`check_compatible`), as the feature service's
own store watcher does, so features added to the store reach the checks here.

Deadlines: a store read is not interruptible; `timeout_s` bounds nothing here (the SQLite and
Redis stores have their own timeouts). `on_call(method, seconds, code)` hears every read with the
feature service's method names, so the server's feature-call metrics keep their meaning.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from inference_server.feature_client import SchemaMismatch, UserView
from recsys.errors import RecsysError
from recsys.feature_values import as_served
from recsys.schema import FeatureContract

__all__ = ["FeatureCore", "LocalFeatures"]

# Feature-row texts whose values are kept decoded (rows repeat: a user's row on every request).
MEMO_ENTRIES = 50_000


class FeatureCore(Protocol):
    """What `LocalFeatures` reads through: `feature_service.service.FeatureServiceCore`."""

    contract: FeatureContract
    contract_hash: str
    max_batch: int  # most ids one read may carry

    def get_user_features(self, user_ids: Sequence[str], max_history: int = 0) -> list[Any]: ...

    def get_item_features(self, item_ids: Sequence[str]) -> list[Any]: ...

    def refresh_contract(self) -> bool: ...

    def close(self) -> None: ...


class LocalFeatures:
    def __init__(self, core: FeatureCore, url: str, *, timeout_s: float = 1.0) -> None:
        self.core = core
        self.target = _where(url)  # the store URL without credentials, for messages and logs
        self.name = f"feature store {self.target}"
        self.timeout_s = timeout_s
        self.on_call: Callable[[str, float, str], None] | None = None
        self.on_oversize: Callable[[str, int], None] | None = None  # never called: no message limit here
        self._memo: dict[str, dict[str, Any]] = {}
        self._contract_lock = threading.Lock()

    def get_user(self, user_id: str, max_history: int, *, timeout_s: float | None = None) -> UserView:
        record = self._read("GetUserFeatures", self.core.get_user_features, [user_id], max_history)[0]
        if record is None:
            return UserView(user_id, False, ())
        kinds = tuple(record.history_events) if any(record.history_events) else ()
        return UserView(
            user_id,
            True,
            tuple(record.history),
            self._values(record.features_json),
            self.core.contract_hash,
            kinds,
        )

    def get_items(self, item_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Features of the items the store knows, by id; unknown ids are left out."""
        ids = list(item_ids)
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), self.core.max_batch):
            chunk = ids[start : start + self.core.max_batch]
            records = self._read("GetItemFeatures", self.core.get_item_features, chunk)
            found.update((i, self._values(r.features_json)) for i, r in zip(chunk, records) if r is not None)
        return found

    def contract(self) -> FeatureContract:
        """The store's feature contract now (read from the store again)."""
        with self._contract_lock:
            self._read("GetSchema", self.core.refresh_contract)
            return self.core.contract

    def contract_of(self, contract_hash: str) -> FeatureContract:
        known = self.core.contract
        if known.hash == contract_hash:
            return known
        return self.contract()

    def check_compatible(self, needs: FeatureContract) -> None:
        """`SchemaMismatch` when the store does not hold what `needs` lists, `Unavailable` when
        it cannot be read."""
        problems = self.contract().problems(needs)
        if problems:
            raise SchemaMismatch(self.target, problems)

    def close(self) -> None:
        self.core.close()

    def _read(self, method: str, call: Callable[..., Any], *args: Any) -> Any:
        start = time.perf_counter()
        try:
            result = call(*args)
        except RecsysError as exc:
            if self.on_call is not None:
                self.on_call(method, time.perf_counter() - start, exc.code.name)
            raise
        if self.on_call is not None:
            self.on_call(method, time.perf_counter() - start, "OK")
        return result

    def _values(self, features_json: str) -> dict[str, Any]:
        """A stored feature row as the gRPC path delivers it; decoded once per distinct text.
        Callers only read the dict (it is shared by every answer with the same row)."""
        values = self._memo.get(features_json)
        if values is None:
            values = as_served(json.loads(features_json))
            if len(self._memo) >= MEMO_ENTRIES:
                self._memo.clear()
            self._memo[features_json] = values
        return values


def _where(url: str) -> str:
    """`url` without a password: scheme://host:port/path."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else url
