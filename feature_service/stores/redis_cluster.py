"""The Redis store on a Redis Cluster (`redis://node:port/0?cluster=true`).

`RedisClusterStore` is reached through any node's address. Its layout differs from the single
Redis one (feature_service/stores/redis.py): one hash tag per user, item and event id, so every
script touches one slot. The prefix must not contain `{` or `}`:

    {p}{u:ID}:r  hash  row ("updated_at features-JSON"), features_at, seq (the user's own counter)
    {p}{u:ID}:h  zset  the history (with kinds), as in redis.py;  :k set, as there;
                 :e hash member -> event_id
    {p}{u:ID}:i  hash  event_id -> the claim it was recorded under
    {p}{u:ID}:t        the tombstone (forgotten_at), deleted only by clear
    {p}{i:ID}    hash  row ("updated_at features-JSON")
    {p}{e:EID}         the claim on an event id: "ms token user_id" (ms: that node's TIME)
    {p}meta      hash

An event id is held store-wide, so an append first claims each id on its own slot (SET when
absent), then records each user's events in one script on that user's slot, then releases the
claims of events it did not record and of events the bound dropped. A claim whose user does not
hold the event is stale after 30 s (a writer died between the steps) and is taken over. Each
user's writes are atomic; a batch over many users is not (a reader may see some users of it
first), and two calls racing on one event id count it once even when the winner turns out to
be a duplicate by (user, item, timestamp). Counts, tombstones and `clear` scan every primary.
Single-Redis stores keep their layout: nothing to migrate; a store moves to a cluster by
loading its artifact into the cluster store.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from redis.cluster import RedisCluster
from redis.exceptions import NoScriptError

from feature_service.stores.base import (
    MAX_EVENTS,
    Event,
    ItemRecord,
    Store,
    UserRecord,
    features_json,
)
from feature_service.stores.redis import _CLEAR_CHUNK, LUA_MEMBER, RedisStore, check_kinds

__all__ = ["RedisClusterStore"]

log = logging.getLogger(__name__)

# --- Redis Cluster: every script below touches the keys of one hash tag only -----------------

_CLAIM_STALE_MS = 30_000  # a claim younger than this may belong to a write still in flight

# KEYS[1]: an event id's claim. ARGV: "token user_id", stale ms, the stale claim to take over
# ('' for none). Returns {1, claim} when claimed, else {0, holder's claim, 1 if it is stale}.
_C_CLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local held = redis.call('GET', KEYS[1])
if (not held) or held == ARGV[3] then
  local claim = now .. ' ' .. ARGV[1]
  redis.call('SET', KEYS[1], claim)
  return {1, claim}
end
local at = tonumber(string.sub(held, 1, string.find(held, ' ', 1, true) - 1))
return {0, held, (now - at >= tonumber(ARGV[2])) and 1 or 0}
"""

# KEYS[1]: an event id's claim; ARGV[1]: the claim to release (someone else's is kept).
_C_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS[1]: the row hash; ARGV: now, older_than ('' for none), features JSON, 1 to keep a
# features_at (users). Returns 1 when written.
_C_PUT = """
local old, features, older = redis.call('HGET', KEYS[1], 'row'), ARGV[3], tonumber(ARGV[2])
if old then
  local sep = string.find(old, ' ', 1, true)
  if string.sub(old, sep + 1) == features then return 0 end
  if older then
    local at = ARGV[4] == '1' and redis.call('HGET', KEYS[1], 'features_at')
    if tonumber(at or string.sub(old, 1, sep - 1)) >= older then return 0 end
  end
end
redis.call('HSET', KEYS[1], 'row', ARGV[1] .. ' ' .. features)
if ARGV[4] == '1' then redis.call('HSET', KEYS[1], 'features_at', ARGV[1]) end
return 1
"""

# KEYS: one user's r, h, k, e, i. ARGV: now, max_events, then (item_id, timestamp, event_id,
# claim, kind) quintuples. Returns {flags ('1' recorded / '0' duplicate, one per event), then
# (event_id, claim) pairs of the events the bound dropped}.
_C_APPEND = (
    LUA_MEMBER
    + """
local r, h, k, e, i = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local now, max_events, flags, out = ARGV[1], tonumber(ARGV[2]), {}, {''}
for n = 3, #ARGV, 5 do
  local field, eid = ARGV[n + 1] .. ':' .. ARGV[n], ARGV[n + 2]
  if redis.call('SISMEMBER', k, field) == 0 then
    local member = member_of(redis.call('HINCRBY', r, 'seq', 1), field, ARGV[n + 4])
    redis.call('ZADD', h, ARGV[n + 1], member)
    redis.call('SADD', k, field)
    if eid ~= '' then
      redis.call('HSET', e, member, eid)
      redis.call('HSET', i, eid, ARGV[n + 3])
    end
    flags[#flags + 1] = '1'
  else
    flags[#flags + 1] = '0'
  end
end
out[1] = table.concat(flags)
if not string.find(out[1], '1', 1, true) then return out end
local row, features = redis.call('HGET', r, 'row'), '{}'
if row then
  features = string.sub(row, string.find(row, ' ', 1, true) + 1)
else
  redis.call('HSET', r, 'features_at', 0)
end
redis.call('HSET', r, 'row', now .. ' ' .. features)
local excess = redis.call('ZCARD', h) - max_events
if excess > 0 then
  local old = redis.call('ZRANGE', h, 0, excess - 1)
  for n = 1, #old do
    redis.call('SREM', k, field_of(old[n]))
    local eid = redis.call('HGET', e, old[n])
    if eid then
      out[#out + 1], out[#out + 2] = eid, redis.call('HGET', i, eid) or ''
      redis.call('HDEL', e, old[n])
      redis.call('HDEL', i, eid)
    end
  end
  redis.call('ZREMRANGEBYRANK', h, 0, excess - 1)
end
return out
"""
)

# KEYS: one user's r, h, k, e, i, t; ARGV[1]: now. Returns {1 if anything was held, then the
# (event_id, claim) pairs to release}.
_C_FORGET = """
local out = {redis.call('EXISTS', KEYS[1], KEYS[2])}
for _, v in ipairs(redis.call('HGETALL', KEYS[5])) do out[#out + 1] = v end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
redis.call('SET', KEYS[6], ARGV[1])
if out[1] > 0 then out[1] = 1 end
return out
"""

# KEYS: one user's r, h; ARGV[1]: max_history. One snapshot of the row and the recent history.
_C_READ = """
local row = redis.call('HGET', KEYS[1], 'row')
if not row then return {false} end
if ARGV[1] == '0' then return {row} end
return {row, redis.call('ZRANGE', KEYS[2], -tonumber(ARGV[1]), -1)}
"""


def _glob(text: str) -> str:
    """`text` matched literally in a SCAN pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class RedisClusterStore(RedisStore):
    """The Redis store on a Redis Cluster (see the module docstring for its layout)."""

    def __init__(
        self,
        client: Any,
        *,
        prefix: str = "recsys:",
        clock: Callable[[], float] = time.time,
        max_events: int = MAX_EVENTS,
        where: str = "redis",
    ) -> None:
        Store.__init__(self, max_events)
        if "{" in prefix or "}" in prefix:
            raise ValueError(f"a Redis Cluster store's prefix must not contain '{{' or '}}': {prefix!r}")
        self.prefix, self.where = prefix, where
        self._client, self._clock = client, clock
        self._closed, self._close_lock = False, threading.Lock()
        self._sha: dict[str, str] = {}
        with self._call():
            self._load_scripts()
            aof = client.info("persistence", target_nodes=RedisCluster.PRIMARIES)
        off = sorted(node for node, info in aof.items() if not info.get("aof_enabled"))
        if off:
            log.warning("%s has appendonly off on %s: a restart of Redis loses recent writes", where, ", ".join(off))

    def _load_scripts(self) -> None:
        for src in (_C_CLAIM, _C_RELEASE, _C_PUT, _C_APPEND, _C_FORGET, _C_READ):
            self._sha[src] = self._client.script_load(src)  # loads on every primary

    def _scripts(self, calls: list[tuple[str, list[str], list[Any]]]) -> list[Any]:
        """Runs (script, keys, args) calls in one pipeline (a batch per node), results in order.

        A call a node answers NOSCRIPT (a failover, SCRIPT FLUSH) is rerun once after loading
        the scripts again; only those calls, so no write runs twice.
        """
        results: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        if not todo:
            return results
        for attempt in range(2):
            pipe = self._client.pipeline()
            for n in todo:
                src, keys, args = calls[n]
                pipe.evalsha(self._sha[src], len(keys), *keys, *args)
            answers = pipe.execute(raise_on_error=False)
            retry = []
            for n, answer in zip(todo, answers):
                if isinstance(answer, NoScriptError) and attempt == 0:
                    retry.append(n)
                elif isinstance(answer, Exception):
                    raise answer
                else:
                    results[n] = answer
            if not retry:
                break
            self._load_scripts()
            todo = retry
        return results

    def _user(self, user_id: str, kind: str) -> str:
        return f"{self.prefix}{{u:{user_id}}}:{kind}"

    def _user_keys(self, user_id: str, kinds: str) -> list[str]:
        return [self._user(user_id, kind) for kind in kinds]

    def _item(self, item_id: str) -> str:
        return f"{self.prefix}{{i:{item_id}}}"

    def _claim_key(self, event_id: str) -> str:
        return f"{self.prefix}{{e:{event_id}}}"

    def _scan(self, pattern: str) -> list[bytes]:
        """Every key matching `pattern` (a SCAN glob), from every primary."""
        return list(self._client.scan_iter(match=pattern, count=1000, target_nodes=RedisCluster.PRIMARIES))

    def get_users(self, user_ids: Sequence[str], max_history: int) -> list[UserRecord | None]:
        if max_history < 0:
            raise ValueError(f"max_history must be >= 0, got {max_history}")
        if not user_ids:
            return []
        unique = list(dict.fromkeys(user_ids))
        with self._call():
            answers = self._scripts([(_C_READ, self._user_keys(uid, "rh"), [max_history]) for uid in unique])
        found: dict[str, UserRecord | None] = {}
        for uid, answer in zip(unique, answers):
            if answer[0] is None:
                found[uid] = None
                continue
            found[uid] = self._user_record(uid, answer[0], answer[1] if max_history else [])
        return [found[uid] for uid in user_ids]

    def get_items(self, item_ids: Sequence[str]) -> list[ItemRecord | None]:
        if not item_ids:
            return []
        with self._call():
            pipe = self._client.pipeline()
            for iid in item_ids:
                pipe.hget(self._item(iid), "row")
            rows = pipe.execute()
        return [None if row is None else ItemRecord(iid, *self._row(row)) for iid, row in zip(item_ids, rows)]

    def _put_rows(self, keys: list[str], rows: Iterable[tuple[str, dict[str, Any]]], older_than: float | None) -> int:
        users = keys[0] == "users"
        now, older = str(int(self._clock())), "" if older_than is None else repr(float(older_than))
        texts = [(key, features_json(features)) for key, features in rows]  # a bad row writes nothing
        calls = [
            (_C_PUT, [self._user(key, "r") if users else self._item(key)], [now, older, text, int(users)])
            for key, text in texts
        ]
        if not calls:
            return 0
        with self._call():
            return sum(int(n) for n in self._scripts(calls))

    def count_users(self) -> int:
        with self._call():
            return len(self._scan(_glob(self.prefix) + "{u:*}:r"))

    def count_items(self) -> int:
        with self._call():
            return len(self._scan(_glob(self.prefix) + "{i:*"))

    def append_events(self, events: Sequence[Event]) -> tuple[int, int]:
        if not events:
            return 0, 0
        check_kinds(events)
        token = uuid.uuid4().hex[:16]
        with self._call():
            claims = self._claim_event_ids(events, token)
            by_user: dict[str, list[Event]] = {}
            taken: set[str] = set()
            for e in events:  # an event id goes with the first event carrying it only
                if e.event_id and (e.event_id not in claims or e.event_id in taken):
                    continue
                taken.add(e.event_id)
                by_user.setdefault(e.user_id, []).append(e)
            now, calls = int(self._clock()), []
            for uid, mine in by_user.items():
                args: list[Any] = [now, self.max_events]
                for e in mine:
                    args += (e.item_id, e.timestamp, e.event_id, claims.get(e.event_id, ""), e.kind)
                calls.append((_C_APPEND, self._user_keys(uid, "rhkei"), args))
            answers = self._scripts(calls)
            recorded, release = 0, []
            for mine, (flags, *freed) in zip(by_user.values(), answers):
                for e, flag in zip(mine, flags.decode()):
                    recorded += flag == "1"
                    if flag == "0" and e.event_id:
                        release.append((e.event_id, claims[e.event_id]))
                release += [(freed[n].decode(), freed[n + 1]) for n in range(0, len(freed), 2)]
            self._release(release)
        return recorded, len(events) - recorded

    def _claim_event_ids(self, events: Sequence[Event], token: str) -> dict[str, str]:
        """Claims each event id of `events` for the first event carrying it: event id -> claim.

        Ids held, or claimed by a write still in flight, are left out (their events are duplicates).
        """
        first = {e.event_id: e.user_id for e in reversed(events) if e.event_id}
        if not first:
            return {}
        eids = list(first)
        answers = self._scripts(
            [(_C_CLAIM, [self._claim_key(eid)], [f"{token} {first[eid]}", _CLAIM_STALE_MS, ""]) for eid in eids]
        )
        claims = {eid: a[1].decode() for eid, a in zip(eids, answers) if a[0] == 1}
        stale = [(eid, a[1].decode()) for eid, a in zip(eids, answers) if a[0] == 0 and a[2] == 1]
        if stale:  # a stale claim stands while its user still holds the event
            pipe = self._client.pipeline()
            for eid, held in stale:
                pipe.hget(self._user(held.split(" ", 2)[2], "i"), eid)
            holds = pipe.execute()
            takeover = [(eid, held) for (eid, held), h in zip(stale, holds) if h is None]
            answers = self._scripts(
                [
                    (_C_CLAIM, [self._claim_key(eid)], [f"{token} {first[eid]}", _CLAIM_STALE_MS, held])
                    for eid, held in takeover
                ]
            )
            claims.update({eid: a[1].decode() for (eid, _), a in zip(takeover, answers) if a[0] == 1})
        return claims

    def _release(self, claims: list[tuple[str, Any]]) -> None:
        self._scripts([(_C_RELEASE, [self._claim_key(eid)], [claim]) for eid, claim in claims if claim])

    def forget_user(self, user_id: str) -> bool:
        with self._call():
            (answer,) = self._scripts([(_C_FORGET, self._user_keys(user_id, "rhkeit"), [int(self._clock())])])
            held, *pairs = answer
            self._release([(pairs[n].decode(), pairs[n + 1]) for n in range(0, len(pairs), 2)])
        return bool(held)

    def forgotten_users(self) -> dict[str, int]:
        start = len(self.prefix) + len("{u:")
        with self._call():
            keys = self._scan(_glob(self.prefix) + "{u:*}:t")
            pipe = self._client.pipeline()
            for key in keys:
                pipe.get(key)
            values = pipe.execute() if keys else []
        return {key.decode()[start:-3]: int(v) for key, v in zip(keys, values) if v is not None}

    def clear(self) -> None:
        with self._call():
            keys = self._scan(_glob(self.prefix) + "{*")
            for start in range(0, len(keys), _CLEAR_CHUNK):
                self._client.unlink(*keys[start : start + _CLEAR_CHUNK])  # split per slot by the client
            self._client.unlink(self.prefix + "meta")

    def ping(self) -> None:
        with self._call():
            self._client.ping(target_nodes=RedisCluster.PRIMARIES)
