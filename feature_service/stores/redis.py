"""The shared store: Redis over a real connection (the `redis` client), for more than one machine.

Keys, all under one prefix (`?prefix=`, default `recsys:`) so one Redis can hold several stores:

    {p}users         hash  user_id -> "updated_at features-JSON"  (a field <=> the user is known)
    {p}features_at   hash  user_id -> when its feature row was last written (0: events only;
                           absent in rows an older release wrote, where updated_at stands in)
    {p}items         hash  item_id -> "updated_at features-JSON"  (one HMGET reads 100 items)
    {p}h:{user_id}   zset  the history: score = timestamp, member = 16 hex digits of a store-wide
                           sequence number [+ "#" + 4 hex digits of the kind's length in
                           bytes + the kind, for an event with a kind] + "timestamp:item_id",
                           so ties in time sort by insertion order and the member carries the
                           exact timestamp and the kind (members without the "#" part, as
                           older releases wrote them all, read as events without a kind)
    {p}k:{user_id}   set   "timestamp:item_id" of the held events (duplicate detection)
    {p}e:{user_id}   hash  history member -> event_id, for held events that have one
    {p}eids          set   every held event_id
    {p}seq           the sequence counter
    {p}forgotten     hash  user_id -> forgotten_at
    {p}meta          hash

Every write is one Lua script, so a batch is atomic and readers never see half of it (`clear`
runs one per 1,000 users, then one for the rest, so a large store never blocks Redis); a read
is one round trip (one HMGET for items; HMGET plus the histories in one MULTI/EXEC for users). The scripts touch keys they compute (not declared in
KEYS), which a single Redis (or a primary with replicas) allows and Redis Cluster does not.

Durability is Redis's: with `appendonly yes` an acknowledged write survives a restart of Redis
(`appendfsync everysec` loses at most a second on a power cut, `always` nothing). Opening a
store logs a warning when the server has AOF off. Timestamps are kept as Redis scores
(doubles), exact up to 2**53; the service refuses larger ones.

Connection failures raise `StoreUnavailable` fast (one immediate retry, 1 s connect timeout,
2 s command timeout; `socket_timeout` and the other redis-py URL options override these);
the client reconnects on the next call once Redis is back.

Redis Cluster (`?cluster=true`): feature_service/stores/redis_cluster.py, another key layout.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from feature_service.stores.base import (
    MAX_EVENTS,
    Event,
    ItemRecord,
    Store,
    StoreUnavailable,
    UserRecord,
    features_json,
    split_options,
)

__all__ = ["RedisStore"]

log = logging.getLogger(__name__)

SCHEMES = ("redis", "rediss")
_SEQ_DIGITS = 16

_CLEAR_CHUNK = 1000  # users per clear script

# KEYS[1]: the users or items hash; KEYS[2], for users only: the features_at hash (items: the
# row's updated_at is its feature-write time). ARGV: now, older_than ('' for none), then
# (id, features JSON) pairs.
_PUT = """
local now, older, changed = ARGV[1], tonumber(ARGV[2]), 0
for n = 3, #ARGV, 2 do
  local id, features = ARGV[n], ARGV[n + 1]
  local old, write = redis.call('HGET', KEYS[1], id), true
  if old then
    local sep = string.find(old, ' ', 1, true)
    if string.sub(old, sep + 1) == features then
      write = false
    elseif older then
      local at = KEYS[2] and redis.call('HGET', KEYS[2], id)
      write = tonumber(at or string.sub(old, 1, sep - 1)) < older
    end
  end
  if write then
    redis.call('HSET', KEYS[1], id, now .. ' ' .. features)
    if KEYS[2] then redis.call('HSET', KEYS[2], id, now) end
    changed = changed + 1
  end
end
return changed
"""

# History members (both layouts): `member_of` builds one, `field_of` gives back its
# "timestamp:item_id" (the duplicate key). A timestamp never starts with "#" (35), so a member
# with a kind is told from one without by its 17th byte.
LUA_MEMBER = """
local function member_of(seq, field, kind)
  if kind == '' then return string.format('%016x', seq) .. field end
  return string.format('%016x', seq) .. '#' .. string.format('%04x', #kind) .. kind .. field
end
local function field_of(member)
  if string.byte(member, 17) == 35 then return string.sub(member, 22 + tonumber(string.sub(member, 18, 21), 16)) end
  return string.sub(member, 17)
end
"""

# ARGV: prefix, now, max_events, then (user_id, item_id, timestamp, event_id, kind) quintuples.
# Returns the number recorded; the bound is applied per touched user after the whole batch.
_APPEND = (
    LUA_MEMBER
    + """
local p, now, max_events = ARGV[1], ARGV[2], tonumber(ARGV[3])
local recorded, touched = 0, {}
for n = 4, #ARGV, 5 do
  local uid, item, ts, eid = ARGV[n], ARGV[n + 1], ARGV[n + 2], ARGV[n + 3]
  local field = ts .. ':' .. item
  if redis.call('SISMEMBER', p .. 'k:' .. uid, field) == 0
     and (eid == '' or redis.call('SISMEMBER', p .. 'eids', eid) == 0) then
    local member = member_of(redis.call('INCR', p .. 'seq'), field, ARGV[n + 4])
    redis.call('ZADD', p .. 'h:' .. uid, ts, member)
    redis.call('SADD', p .. 'k:' .. uid, field)
    if eid ~= '' then
      redis.call('SADD', p .. 'eids', eid)
      redis.call('HSET', p .. 'e:' .. uid, member, eid)
    end
    touched[uid] = true
    recorded = recorded + 1
  end
end
for uid in pairs(touched) do
  local row, features = redis.call('HGET', p .. 'users', uid), '{}'
  if row then
    features = string.sub(row, string.find(row, ' ', 1, true) + 1)
  else
    redis.call('HSET', p .. 'features_at', uid, 0)
  end
  redis.call('HSET', p .. 'users', uid, now .. ' ' .. features)
  local excess = redis.call('ZCARD', p .. 'h:' .. uid) - max_events
  if excess > 0 then
    local old = redis.call('ZRANGE', p .. 'h:' .. uid, 0, excess - 1)
    for n = 1, #old do
      local member = old[n]
      redis.call('SREM', p .. 'k:' .. uid, field_of(member))
      local eid = redis.call('HGET', p .. 'e:' .. uid, member)
      if eid then
        redis.call('SREM', p .. 'eids', eid)
        redis.call('HDEL', p .. 'e:' .. uid, member)
      end
    end
    redis.call('ZREMRANGEBYRANK', p .. 'h:' .. uid, 0, excess - 1)
  end
end
return recorded
"""
)

# ARGV: prefix, now, user_id. Returns 1 when anything was held.
_FORGET = """
local p, now, uid = ARGV[1], ARGV[2], ARGV[3]
local eids = redis.call('HVALS', p .. 'e:' .. uid)
for n = 1, #eids do redis.call('SREM', p .. 'eids', eids[n]) end
local held = redis.call('HDEL', p .. 'users', uid)
redis.call('HDEL', p .. 'features_at', uid)
held = held + redis.call('DEL', p .. 'h:' .. uid, p .. 'k:' .. uid, p .. 'e:' .. uid)
redis.call('HSET', p .. 'forgotten', uid, now)
if held > 0 then return 1 end
return 0
"""

# ARGV: prefix, then user ids: deletes those users (rows, histories, event ids). With no user
# ids: deletes every user left (those added since the chunks were listed) and every other key.
_CLEAR = """
local p = ARGV[1]
local function drop(uid)
  local eids = redis.call('HVALS', p .. 'e:' .. uid)
  for n = 1, #eids do redis.call('SREM', p .. 'eids', eids[n]) end
  redis.call('UNLINK', p .. 'h:' .. uid, p .. 'k:' .. uid, p .. 'e:' .. uid)
  redis.call('HDEL', p .. 'users', uid)
  redis.call('HDEL', p .. 'features_at', uid)
end
if #ARGV > 1 then
  for n = 2, #ARGV do drop(ARGV[n]) end
  return 0
end
local uids = redis.call('HKEYS', p .. 'users')
for n = 1, #uids do drop(uids[n]) end
for _, name in ipairs({'users', 'features_at', 'items', 'eids', 'seq', 'forgotten', 'meta'}) do
  redis.call('UNLINK', p .. name)
end
return 0
"""


class RedisStore(Store):
    persistent = True  # data lives in the Redis server, not in this process

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = "recsys:",
        clock: Callable[[], float] = time.time,
        max_events: int = MAX_EVENTS,
        where: str = "redis",
    ) -> None:
        super().__init__(max_events)
        self.prefix = prefix
        self.where = where
        self._client = client
        self._clock = clock
        self._closed = False
        self._close_lock = threading.Lock()
        self._put = client.register_script(_PUT)
        self._append = client.register_script(_APPEND)
        self._forget = client.register_script(_FORGET)
        self._clear = client.register_script(_CLEAR)
        with self._call():
            if client.info("cluster").get("cluster_enabled"):
                raise ValueError(f"{where} is a Redis Cluster: add cluster=true to the store URL")
            aof = client.info("persistence").get("aof_enabled")
        if not aof:
            log.warning("%s has appendonly off: a restart of Redis loses recent writes", where)

    @classmethod
    def from_url(cls, url: str, *, clock: Callable[[], float] = time.time) -> RedisStore:
        """`redis://[[user]:password@]host:port/db` or `rediss://...` (TLS).

        Options: `?prefix=recsys:` (key prefix), `?max_events=N`, `?cluster=true` (a Redis
        Cluster, reached through any of its nodes: returns a `RedisClusterStore`), and
        redis-py's own (`socket_timeout`, `socket_connect_timeout`, ...). `ValueError` when
        `cluster` does not match the server.
        """
        base, options = split_options(url, {"max_events": int, "prefix": str, "cluster": _flag})
        if base.partition("://")[0] not in SCHEMES:
            raise ValueError(f"redis store URL must start with one of {', '.join(s + '://' for s in SCHEMES)}: {url!r}")
        where = base.split("@")[-1].split("?")[0]  # no password in messages
        settings: dict[str, Any] = {
            "socket_connect_timeout": 1.0,
            "socket_timeout": 2.0,
            "retry": Retry(NoBackoff(), 1),  # one immediate retry: a dropped idle connection
            "health_check_interval": 10,
        }
        store_cls: type[RedisStore] = RedisStore
        if options.pop("cluster", False):
            from redis.cluster import RedisCluster

            from feature_service.stores.redis_cluster import RedisClusterStore

            store_cls = RedisClusterStore
            try:
                client: Any = RedisCluster.from_url(base, **settings)
            except RedisClusterException as exc:
                if "not enabled" in str(exc):
                    raise ValueError(f"{where} is not a Redis Cluster: drop cluster=true from the URL") from None
                raise StoreUnavailable(f"{where}: {exc}") from exc
        else:
            client = redis.Redis.from_url(base, **settings)
        try:
            return store_cls(client, clock=clock, where=where, **options)
        except BaseException:
            client.close()
            raise

    @contextmanager
    def _call(self) -> Iterator[None]:
        if self._closed:
            raise StoreUnavailable(f"redis store {self.where} is closed")
        try:
            yield
        except (redis.RedisError, RedisClusterException) as exc:
            raise StoreUnavailable(f"{self.where}: {exc}") from exc

    def _key(self, kind: str, entity: str) -> str:
        return f"{self.prefix}{kind}:{entity}"

    @staticmethod
    def _row(value: bytes) -> tuple[str, int]:
        """`b"updated_at json"` -> (json, updated_at)."""
        updated_at, _, features = value.decode().partition(" ")
        return features, int(updated_at)

    def get_users(self, user_ids: Sequence[str], max_history: int) -> list[UserRecord | None]:
        if max_history < 0:
            raise ValueError(f"max_history must be >= 0, got {max_history}")
        if not user_ids:
            return []
        unique = list(dict.fromkeys(user_ids))
        with self._call():
            pipe = self._client.pipeline(transaction=True)  # one round trip, one snapshot
            pipe.hmget(self.prefix + "users", unique)
            if max_history:
                for uid in unique:
                    pipe.zrange(self._key("h", uid), -max_history, -1)
            rows, *recents = pipe.execute()
        found: dict[str, UserRecord | None] = {}
        for n, (uid, row) in enumerate(zip(unique, rows)):
            if row is None:
                found[uid] = None
                continue
            found[uid] = self._user_record(uid, row, recents[n] if max_history else [])
        return [found[uid] for uid in user_ids]

    def _user_record(self, user_id: str, row: bytes, members: Sequence[bytes]) -> UserRecord:
        """A user's row and history-zset members (oldest first) as a UserRecord (both layouts)."""
        features, updated_at = self._row(row)
        items, stamps, kinds = _history(members)
        return UserRecord(
            user_id=user_id,
            features_json=features,
            history=items,
            history_timestamps=stamps,
            updated_at=updated_at,
            history_events=kinds,
        )

    def get_items(self, item_ids: Sequence[str]) -> list[ItemRecord | None]:
        if not item_ids:
            return []
        with self._call():
            rows = self._client.hmget(self.prefix + "items", item_ids)
        return [None if row is None else ItemRecord(iid, *self._row(row)) for iid, row in zip(item_ids, rows)]

    def put_users(self, rows: Iterable[tuple[str, dict[str, Any]]], *, older_than: float | None = None) -> int:
        return self._put_rows(["users", "features_at"], rows, older_than)

    def put_items(self, rows: Iterable[tuple[str, dict[str, Any]]], *, older_than: float | None = None) -> int:
        return self._put_rows(["items"], rows, older_than)

    def _put_rows(self, keys: list[str], rows: Iterable[tuple[str, dict[str, Any]]], older_than: float | None) -> int:
        args: list[str] = [str(int(self._clock())), "" if older_than is None else repr(float(older_than))]
        for key, features in rows:
            args += (key, features_json(features))  # serialise all first: a bad row writes nothing
        if len(args) == 2:
            return 0
        with self._call():
            return int(self._put(keys=[self.prefix + k for k in keys], args=args))

    def count_users(self) -> int:
        with self._call():
            return int(self._client.hlen(self.prefix + "users"))

    def count_items(self) -> int:
        with self._call():
            return int(self._client.hlen(self.prefix + "items"))

    def append_events(self, events: Sequence[Event]) -> tuple[int, int]:
        if not events:
            return 0, 0
        check_kinds(events)
        args: list[str | int] = [self.prefix, int(self._clock()), self.max_events]
        for e in events:
            args += (e.user_id, e.item_id, e.timestamp, e.event_id, e.kind)
        with self._call():
            recorded = int(self._append(args=args))
        return recorded, len(events) - recorded

    def forget_user(self, user_id: str) -> bool:
        with self._call():
            return bool(self._forget(args=[self.prefix, int(self._clock()), user_id]))

    def forgotten_users(self) -> dict[str, int]:
        with self._call():
            rows = self._client.hgetall(self.prefix + "forgotten")
        return {k.decode(): int(v) for k, v in rows.items()}

    def get_meta(self, key: str) -> str | None:
        with self._call():
            value = self._client.hget(self.prefix + "meta", key)
        return None if value is None else value.decode()

    def set_meta(self, key: str, value: str) -> None:
        with self._call():
            self._client.hset(self.prefix + "meta", key, value)

    def clear(self) -> None:
        with self._call():
            users = self._client.hkeys(self.prefix + "users")
            for start in range(0, len(users), _CLEAR_CHUNK):
                self._clear(args=[self.prefix, *users[start : start + _CLEAR_CHUNK]])
            self._clear(args=[self.prefix])

    def ping(self) -> None:
        with self._call():
            self._client.ping()

    def close(self) -> None:
        with self._close_lock:
            if not self._closed:
                self._closed = True
                self._client.close()


_HASH = ord("#")  # the byte after the sequence number of a member with a kind (see LUA_MEMBER)
_MAX_KIND_BYTES = 0xFFFF  # what a member's 4 hex digits of kind length can say


def check_kinds(events: Sequence[Event]) -> None:
    """`ValueError` for a kind too long for a history member (the service allows 64 characters;
    this guards direct callers), before anything is sent."""
    for e in events:
        if len(e.kind) > _MAX_KIND_BYTES // 4 and len(e.kind.encode()) > _MAX_KIND_BYTES:
            raise ValueError(
                f"event kind of {len(e.kind.encode())} bytes; a Redis store keeps at most {_MAX_KIND_BYTES}"
            )


def _history(members: Sequence[bytes]) -> tuple[list[str], list[int], list[str]]:
    """History members (see LUA_MEMBER) -> aligned (item ids, timestamps, kinds; "" for none).

    Members all without a kind (every one an older release wrote) take the short path: a read
    of a history without kinds costs what it did before kinds existed."""
    if not any(m[_SEQ_DIGITS] == _HASH for m in members):
        events = [m[_SEQ_DIGITS:].decode().partition(":") for m in members]
        return [item for _, _, item in events], [int(ts) for ts, _, _ in events], [""] * len(events)
    items: list[str] = []
    stamps: list[int] = []
    kinds: list[str] = []
    start = _SEQ_DIGITS + 5  # "#" and 4 hex digits of the kind's length in bytes
    for m in members:
        if m[_SEQ_DIGITS] == _HASH:
            end = start + int(m[_SEQ_DIGITS + 1 : start], 16)
            kinds.append(m[start:end].decode())
            ts, _, item = m[end:].decode().partition(":")
        else:
            kinds.append("")
            ts, _, item = m[_SEQ_DIGITS:].decode().partition(":")
        items.append(item)
        stamps.append(int(ts))
    return items, stamps, kinds


def _flag(value: str) -> bool:
    """URL flag: true/false, 1/0, yes/no."""
    lowered = value.lower()
    if lowered not in ("true", "1", "yes", "false", "0", "no"):
        raise ValueError(value)
    return lowered in ("true", "1", "yes")
