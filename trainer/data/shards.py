"""Per-rank shards of a Parquet interaction log: under DDP each rank reads only its own users.

- `user_ranks(user_ids, world)`: the rank that owns each user, from a stable hash of the id
  (blake2b of its UTF-8 bytes, mod `world`): the same on every machine, process and run, unlike
  Python's salted `hash`.
- `read_user_shard(path, rank, world)`: the rows of a Parquet file whose user falls to `rank`,
  read one record batch at a time, so a rank never holds other ranks' rows beyond one batch.
- `read_log_shard(path, rank, world)`: the same over one Parquet file or every file of a
  directory of Parquet files (in path order).
- `agreed_item_counts(local, dist)`: every item's event count over all ranks (a collective), from
  which each rank builds the same item vocabulary (`item_index_from_counts`).
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
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from recsys.artifact import ItemIndex

__all__ = [
    "Collectives",
    "agreed_item_counts",
    "agreed_steps",
    "item_index_from_counts",
    "parquet_files",
    "read_log_shard",
    "read_user_shard",
    "user_ranks",
]

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

    Every column is kept; ids are compared as text (an integer id 7 and "7" go to one rank);
    rows without an id go to rank 0.
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
        # one more slot for a missing id: those rows go to rank 0, whose cleaner counts them dropped
        mine = np.array([owner[u] == rank for u in distinct] + [rank == 0], dtype=bool)
        codes = pc.fill_null(encoded.indices, len(distinct)).to_numpy(zero_copy_only=False)
        mask = mine[codes] if len(codes) else np.zeros(0, dtype=bool)
        if mask.any():
            kept.append(batch.filter(pa.array(mask)))
    return pa.Table.from_batches(kept, schema=source.schema_arrow)


def parquet_files(path: str | Path) -> list[Path]:
    """The Parquet files of `path`: itself when a file, else every data file of the directory
    (names starting with `.` or `_` skipped), sorted. ValueError for anything else, and for a
    hive-partitioned directory, whose partition columns live in the paths, not in the files."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() not in (".parquet", ".pq"):
            raise ValueError(f"{path}: per-rank user shards read Parquet (a .parquet file or a directory of them)")
        return [path]
    if not path.is_dir():
        raise ValueError(f"{path}: no such file or directory")
    dataset = ds.dataset(path, format="parquet", partitioning="hive")
    files = sorted(Path(f) for f in dataset.files)
    if not files:
        raise ValueError(f"{path}: no Parquet files in the directory")
    partitions = sorted(set(dataset.schema.names) - set(pq.ParquetFile(files[0]).schema_arrow.names))
    if partitions:
        raise ValueError(
            f"{path}: hive partition columns ({', '.join(partitions)}) are not read by per-rank shards; "
            "write them into the files"
        )
    return files


def read_log_shard(path: str | Path, rank: int, world: int, *, user_column: str = "user_id") -> pa.Table:
    """`read_user_shard` over every file of `parquet_files(path)`, concatenated in that order
    (files whose schemas differ are unified by column name)."""
    parts = [read_user_shard(f, rank, world, user_column=user_column) for f in parquet_files(path)]
    return pa.concat_tables(parts, promote_options="permissive") if len(parts) > 1 else parts[0]


def item_index_from_counts(counts: Counter, items: pd.DataFrame | None = None) -> ItemIndex:
    """The item index of items with these event counts, ordered as
    trainer.data.encoding.build_item_index orders a whole log (most events first, ties by
    id), with titles from `items` where known."""
    ids = sorted(counts, key=lambda i: (-counts[i], i))
    titles = [""] * len(ids)
    if items is not None and "title" in items.columns:
        lookup = items.set_index("item_id")["title"]
        lookup = lookup[~lookup.index.duplicated(keep="last")]
        titles = ["" if pd.isna(t := lookup.get(i, "")) else str(t) for i in ids]
    return ItemIndex(tuple(ids), tuple(titles), tuple(int(counts[i]) for i in ids))


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
