"""Per-rank shards of a Parquet interaction log: under DDP each rank reads only its own users.

- `user_ranks(user_ids, world)`: the rank that owns each user, from a stable hash of the id
  (blake2b of its UTF-8 bytes, mod `world`): the same on every machine, process and run, unlike
  Python's salted `hash`.
- `read_user_shard(path, rank, world)`: the rows of a Parquet file whose user falls to `rank`,
  read one record batch at a time, so a rank never holds other ranks' rows beyond one batch.
- `agreed_item_counts(local, dist)`: every item's event count over all ranks (a collective), from
  which each rank builds the same item vocabulary.
- `agreed_steps(local, dist)`: the fewest batches any rank has (a collective): every rank runs
  that many DDP steps per epoch, since DDP's collectives must match one for one.

Validation under shards covers rank 0's users only (rank 0 validates), a 1/world sample of the
users a single process would validate on.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

__all__ = ["Collectives", "agreed_item_counts", "agreed_steps", "read_user_shard", "user_ranks"]

_BATCH_ROWS = 65_536


class Collectives(Protocol):
    """What the agreements need of the process group: trainer.distributed.Dist (a layer above
    this package, so it is not imported here)."""

    def gather_objects(self, value: object) -> list: ...

    def min(self, value: int) -> int: ...


def user_ranks(user_ids: Sequence[str], world: int) -> np.ndarray:
    """(N,) int64: the rank in `range(world)` that owns each user id."""
    if world < 1:
        raise ValueError(f"world must be >= 1; got {world}")
    digests = (hashlib.blake2b(str(u).encode(), digest_size=8).digest() for u in user_ids)
    return np.fromiter((int.from_bytes(d, "little") % world for d in digests), dtype=np.int64, count=len(user_ids))


def read_user_shard(path: str | Path, rank: int, world: int, *, user_column: str = "user_id") -> pa.Table:
    """The rows of Parquet `path` whose `user_column` falls to `rank` of `world`, in file order.

    Every column is kept; ids are compared as text (an integer id 7 and "7" go to one rank).
    ValueError when `rank` is outside the world or the column is missing.
    """
    if not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, {world}); got {rank}")
    source = pq.ParquetFile(path)
    if user_column not in source.schema_arrow.names:
        raise ValueError(f"{path}: no {user_column!r} column (columns: {', '.join(source.schema_arrow.names)})")
    owner: dict[str, int] = {}  # user id -> rank, hashed once per distinct user
    kept: list[pa.RecordBatch] = []
    for batch in source.iter_batches(batch_size=_BATCH_ROWS):
        ids = pc.cast(batch.column(user_column), pa.string())
        encoded = pc.dictionary_encode(ids)  # (rows,) codes into the batch's distinct ids
        distinct = encoded.dictionary.to_pylist()
        fresh = [u for u in distinct if u not in owner]
        owner.update(zip(fresh, user_ranks(fresh, world).tolist()))
        mine = np.array([owner[u] == rank for u in distinct], dtype=bool)
        codes = encoded.indices.to_numpy(zero_copy_only=False)
        mask = mine[codes] if len(codes) else np.zeros(0, dtype=bool)
        if mask.any():
            kept.append(batch.filter(pa.array(mask)))
    return pa.Table.from_batches(kept, schema=source.schema_arrow)


def agreed_item_counts(local: Iterable[str] | Counter, dist: Collectives) -> Counter:
    """Event counts per item id over every rank's shard (a collective: every rank calls it)."""
    mine = local if isinstance(local, Counter) else Counter(local)
    total: Counter = Counter()
    for counts in dist.gather_objects(dict(mine)):
        total.update(counts)
    return total


def agreed_steps(local: int, dist: Collectives) -> int:
    """The fewest batches per epoch over the ranks (a collective)."""
    return dist.min(local)
