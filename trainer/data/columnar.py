"""Columnar reading of interaction tables with Arrow: whole columns at a time, in record batches.

A `Source` names a table on disk: a CSV/TSV-like text file, one Parquet file (read by row
groups) or a directory of Parquet files (`part-*.parquet` as Spark, Flink or DuckDB write them,
hive-partitioned or not; names starting with `.` or `_`, such as `_SUCCESS`, are skipped).
`read_columns` reads only the columns asked for, one record batch at a time, and keeps per
batch only what cleaning needs: id columns dictionary-encoded (int32 codes + the distinct
values), timestamps as float64 unix seconds and numbers as float64. Memory stays near 24 bytes
a row plus the distinct ids, whatever the width or encoding of the source.

Parsing matches trainer.data.tables: text is stripped, blank text is missing, a number is
decimal text (`+1`, `.5`, `1e9`), a timestamp is a number of unix seconds or an ISO-8601
datetime (naive ones are UTC); anything else becomes NaN for the cleaner to count.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.parquet as pq

__all__ = [
    "BATCH_ROWS",
    "Source",
    "group_order",
    "arrow_numbers",
    "arrow_seconds",
    "factorize",
    "header_names",
    "id_codes",
    "id_text",
    "read_columns",
    "repeated_rows",
]

BATCH_ROWS = 1 << 20  # rows per record batch: large enough to amortise per-batch work, ~25 MB kept
_CSV_BLOCK = 32 << 20  # bytes of text parsed at a time
# Finite decimal numbers only: "inf"/"nan" are not values a table means (the cleaner drops them).
_NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
_UNIT_SECONDS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


@dataclass(frozen=True)
class Source:
    """A table on disk. Text: `delimiter`, `quoted` (whether '"' quotes fields) and either a
    header line or `names`. Parquet: a file or a directory of files (`parquet=True`)."""

    path: Path
    parquet: bool = False
    delimiter: str = ","
    quoted: bool = True
    names: tuple[str, ...] | None = None  # text: column names given, not read from the header
    header: bool = True  # text: the first line names the columns (skipped when `names` are given)

    def column_names(self) -> list[str]:
        """The table's column names (a Parquet directory's hive partition keys included)."""
        if self.parquet:
            return list(self._dataset().schema.names)
        if self.names is not None:
            return list(self.names)
        return header_names(self.path, self.delimiter, self.quoted)

    def read_all(self) -> pd.DataFrame:
        """The whole Parquet table as a frame (feature tables, which are small)."""
        return self._dataset().to_table().to_pandas()

    def batches(self, columns: Sequence[str], dictionary: Sequence[str] = ()) -> Iterator[pa.RecordBatch]:
        """Record batches of `columns` (names as column_names gives them), in file order.
        One Parquet file: whole row groups per batch (at least BATCH_ROWS rows while they
        last), each read decoding its groups and columns in parallel. A Parquet directory:
        text columns named in `dictionary` come dictionary-encoded as stored."""
        if self.parquet and self.path.is_file():
            yield from _parquet_file_batches(self.path, columns)
            return
        if self.parquet:
            # Readahead of one batch per fragment keeps memory bounded on wide directories.
            yield from self._dataset(dictionary).to_batches(
                columns=list(columns), batch_size=BATCH_ROWS, batch_readahead=1, fragment_readahead=1
            )
            return
        names = self.column_names()
        read = pacsv.ReadOptions(
            block_size=_CSV_BLOCK,
            column_names=names,
            skip_rows=1 if self.header else 0,
            encoding="utf8",
        )
        parse = pacsv.ParseOptions(delimiter=self.delimiter, quote_char='"' if self.quoted else False)
        convert = pacsv.ConvertOptions(
            column_types={name: pa.string() for name in names},  # ids are text: "007" stays "007"
            include_columns=list(columns),
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
        )
        with pacsv.open_csv(self.path, read_options=read, parse_options=parse, convert_options=convert) as reader:
            yield from reader

    def _dataset(self, dictionary: Sequence[str] = ()) -> ds.Dataset:
        read = ds.ParquetReadOptions(dictionary_columns=set(dictionary))
        return ds.dataset(self.path, format=ds.ParquetFileFormat(read_options=read), partitioning="hive")


def _parquet_file_batches(path: Path, columns: Sequence[str]) -> Iterator[pa.RecordBatch]:
    """One Parquet file's `columns` as record batches of whole row groups: groups are read
    together until they hold BATCH_ROWS rows, so memory is bounded by the larger of a batch
    and a row group. Each read decodes its row groups and columns on Arrow's thread pool.
    Text comes as plain strings (encoded per batch by the caller): Arrow decodes ids faster
    that way than as dictionaries, which large id columns seldom are on disk anyway (writers fall
    back to plain pages once a column's dictionary outgrows its page)."""
    with pq.ParquetFile(path) as parquet:
        metadata = parquet.metadata
        groups: list[int] = []
        rows = 0
        for group in range(metadata.num_row_groups):
            groups.append(group)
            rows += metadata.row_group(group).num_rows
            if rows >= BATCH_ROWS or group == metadata.num_row_groups - 1:
                table = parquet.read_row_groups(groups, columns=list(columns), use_threads=True)
                yield from table.combine_chunks().to_batches()
                groups, rows = [], 0


def read_columns(source: Source, ids: dict[str, str], others: dict[str, str]) -> pd.DataFrame:
    """Reads `source` into a frame: `ids` ({source name: output name}) as Categoricals of the
    values as stored (missing -> NaN code -1); `others` as float64, "timestamp" in unix
    seconds and any other name as a number (NaN where missing or unparsable).

    Raises ValueError naming the file when it cannot be read (corrupt, ragged rows).
    """
    wanted = list(dict.fromkeys([*ids, *others]))
    encoded: dict[str, list[pa.DictionaryArray]] = {name: [] for name in ids}
    numbers: dict[str, list[np.ndarray]] = {name: [] for name in others}
    try:
        for batch in source.batches(wanted, dictionary=list(ids)):
            for name in ids:
                encoded[name].append(_dictionary(batch.column(name)))
            for name, out in others.items():
                parse = arrow_seconds if out == "timestamp" else arrow_numbers
                numbers[name].append(parse(batch.column(name)))
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"{source.path}: cannot read the table: {exc}") from exc
    frame: dict[str, Any] = {}
    for name, out in ids.items():
        frame[out] = _categorical(encoded[name])
    for name, out in others.items():
        frame[out] = np.concatenate(numbers[name]) if numbers[name] else np.empty(0, dtype=np.float64)
    return pd.DataFrame(frame, copy=False)


def id_text(value: Any) -> str | None:
    """An id as str: stripped text, integral floats without ".0"; None when missing or blank."""
    if isinstance(value, float | np.floating) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    text = str(value).strip()
    return text or None


def factorize(column: pd.Series) -> tuple[np.ndarray, list]:
    """(int64 code per row, -1 where missing; the distinct stored values): a Categorical's own
    codes, else one hash per row (pandas factorize)."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        return column.cat.codes.to_numpy(dtype=np.int64), column.cat.categories.tolist()
    codes, uniques = pd.factorize(column, use_na_sentinel=True)
    return codes.astype(np.int64, copy=False), list(uniques)


def id_codes(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(codes, ids): int64 codes per row (-1 where missing) into `ids`, distinct str ids.

    Each distinct stored value is converted once (id_text), so the cost per row is a hash or a
    lookup, never Python; values that convert to the same id (7, 7.0, " 7") share one code.
    """
    codes, values = factorize(column)
    ready = _clean_ids(values)
    if ready is not None:
        return codes, ready
    cleaned = [id_text(v) for v in values]
    known = [c for c in cleaned if c is not None]
    ids = np.array(list(dict.fromkeys(known)), dtype=object)
    position = {v: i for i, v in enumerate(ids)}
    remap = np.array([-1 if c is None else position[c] for c in cleaned] + [-1], dtype=np.int64)
    return remap[codes], ids  # code -1 picks remap's last entry, -1


def _clean_ids(values: list[Any]) -> np.ndarray | None:
    """The distinct values as str ids when that needs no per-value work (already stripped,
    non-blank text, or integers); None otherwise."""
    try:
        array = pa.array(values, from_pandas=True)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        return None
    if array.null_count:
        return None
    if pa.types.is_integer(array.type):
        array = pc.cast(array, pa.string())  # distinct integers, distinct decimal strings
    elif pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        stripped = pc.utf8_trim_whitespace(array)
        if len(array) and not (pc.all(pc.equal(stripped, array)).as_py() and pc.min(pc.utf8_length(array)).as_py()):
            return None
    else:
        return None
    return np.asarray(array.to_numpy(zero_copy_only=False), dtype=object)


def group_order(codes: np.ndarray, size: int) -> np.ndarray:
    """Row positions sorted by code (0 <= code < `size` < 2**32), equal codes in row order:
    `np.argsort(codes, kind="stable")`, by two passes of NumPy's 16-bit radix sort (linear)
    instead of a comparison sort."""
    if size <= 1 << 16:
        return np.argsort(codes.astype(np.uint16), kind="stable")
    order = np.argsort((codes & 0xFFFF).astype(np.uint16), kind="stable")
    return order[np.argsort((codes[order] >> 16).astype(np.uint16), kind="stable")]


def repeated_rows(keys: Sequence[np.ndarray]) -> np.ndarray:
    """bool per row: whether an earlier row has equal values in every one of `keys` (aligned
    1-d numeric arrays).

    Rows are hashed to 64 bits and sorted by hash; only rows whose hash occurs more than once
    are compared exactly, so the cost is one sort whatever the number of distinct rows (a hash
    table of 10M distinct keys is several times slower here).
    """
    n = len(keys[0]) if keys else 0
    repeated = np.zeros(n, dtype=bool)
    if n < 2:
        return repeated
    digest = np.zeros(n, dtype=np.uint64)
    for key in keys:
        if key.dtype.kind == "f":
            key = key + 0.0  # -0.0 -> 0.0: equal values, equal bits
        bits = key.view(np.uint64) if key.dtype.itemsize == 8 else key.astype(np.uint64)
        np.multiply(digest, np.uint64(0x9E3779B97F4A7C15), out=digest)  # wraps
        np.bitwise_xor(digest, bits, out=digest)
    _mix(digest)
    order = np.argsort(digest)
    ranked = digest[order]
    same = ranked[1:] == ranked[:-1]
    if not same.any():
        return repeated
    candidates = np.zeros(n, dtype=bool)
    candidates[order[1:][same]] = True
    candidates[order[:-1][same]] = True
    rows = np.flatnonzero(candidates)  # ascending: input order
    exact = pd.DataFrame({str(k): key[rows] for k, key in enumerate(keys)}).duplicated(keep="first")
    repeated[rows[exact.to_numpy()]] = True
    return repeated


def _mix(x: np.ndarray) -> None:
    """splitmix64's finaliser, element-wise and in place (uint64 arithmetic wraps)."""
    for shift, factor in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
        np.bitwise_xor(x, x >> np.uint64(shift), out=x)
        np.multiply(x, np.uint64(factor), out=x)
    np.bitwise_xor(x, x >> np.uint64(31), out=x)


def arrow_numbers(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """float64 per value: numbers as they are, decimal text parsed; NaN otherwise."""
    array = _decoded(array)
    kind = array.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        return _floats(pc.cast(array, pa.float64()))
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        fast = _cast_all(array)
        return fast if fast is not None else _floats(_parse_numbers(_blank_to_null(array)))
    return np.full(len(array), np.nan)


def arrow_seconds(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """float64 unix seconds per value: numbers, datetimes and dates (naive = UTC), text holding
    either a number or an ISO-8601 datetime; NaN otherwise."""
    array = _decoded(array)
    kind = array.type
    if pa.types.is_date(kind):
        array, kind = pc.cast(array, pa.timestamp("s")), pa.timestamp("s")
    if pa.types.is_timestamp(kind):
        raw = _floats(pc.cast(pc.cast(array, pa.timestamp(kind.unit)), pa.int64()))
        return raw * _UNIT_SECONDS[kind.unit]  # a new array
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        return arrow_numbers(array)
    fast = _cast_all(array)
    if fast is not None:
        return fast
    text = _blank_to_null(array)
    seconds = np.array(_floats(_parse_numbers(text)))  # a writable copy: dates go in below
    dates = np.isnan(seconds) & _valid(text)
    if dates.any():
        strings = pc.filter(text, pa.array(dates)).to_pylist()
        parsed = pd.to_datetime(pd.Series(strings, dtype=object), format="ISO8601", utc=True, errors="coerce")
        delta = (parsed - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)
        seconds[dates] = delta.to_numpy(dtype="float64", na_value=np.nan)
    return seconds


def header_names(path: Path, delimiter: str, quoted: bool = True) -> list[str]:
    """The cells of a text table's first line."""
    with path.open(encoding="utf-8-sig", errors="replace", newline="") as f:
        line = f.readline()
    quoting = csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE
    return next(csv.reader([line.rstrip("\r\n")], delimiter=delimiter, quoting=quoting), [])


def _decoded(array: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    if pa.types.is_dictionary(array.type):
        return pc.cast(array, array.type.value_type)
    return array


def _dictionary(array: pa.Array | pa.ChunkedArray) -> pa.DictionaryArray:
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if pa.types.is_dictionary(array.type):
        if array.type.value_type == pa.string() and array.type.index_type == pa.int32():
            return array  # as Parquet stores it
        array = pc.cast(array, array.type.value_type)  # one type for unify_dictionaries
    if pa.types.is_floating(array.type):
        array = pc.if_else(pc.is_nan(array), pa.scalar(None, array.type), array)  # NaN is missing
    if pa.types.is_large_string(array.type):
        array = pc.cast(array, pa.string())
    return pc.dictionary_encode(array)


def _categorical(chunks: list[pa.DictionaryArray]) -> pd.Categorical:
    """One Categorical over batches encoded apart (their dictionaries unified)."""
    if not chunks:
        return pd.Categorical.from_codes(np.empty(0, dtype=np.int32), categories=pd.Index([], dtype=object))
    unified = pa.chunked_array(chunks).unify_dictionaries()
    dictionary = unified.chunk(0).dictionary
    codes = np.concatenate([_indices(c) for c in unified.chunks])
    return pd.Categorical.from_codes(codes.astype(np.int32, copy=False), categories=pd.Index(dictionary.to_pylist()))


def _indices(chunk: pa.DictionaryArray) -> np.ndarray:
    """A chunk's dictionary codes, -1 where missing (no fill pass when nothing is missing)."""
    if chunk.null_count:
        return pc.fill_null(chunk.indices, -1).to_numpy(zero_copy_only=False)
    return chunk.indices.to_numpy(zero_copy_only=False)


def _cast_all(text: pa.Array | pa.ChunkedArray) -> np.ndarray | None:
    """float64 of text that is all plain numbers (the usual case), parsed in one cast; None
    when any value is not (padded, blank, a date, a word), for the careful path."""
    try:
        return _floats(pc.cast(text, pa.float64()))
    except pa.ArrowInvalid:
        return None


def _blank_to_null(text: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    stripped = pc.utf8_trim_whitespace(text)
    return pc.if_else(pc.equal(stripped, ""), pa.scalar(None, stripped.type), stripped)


def _parse_numbers(text: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    numeric = pc.match_substring_regex(text, _NUMBER)
    return pc.cast(pc.if_else(numeric, text, pa.scalar(None, text.type)), pa.float64())


def _valid(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(pc.is_valid(array).to_numpy(zero_copy_only=False), dtype=bool)


def _floats(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """float64 values, NaN where null (Arrow writes NaN for nulls when converting floats)."""
    floats = pc.cast(array, pa.float64())
    if isinstance(floats, pa.ChunkedArray):
        floats = floats.combine_chunks() if floats.num_chunks != 1 else floats.chunk(0)
    return floats.to_numpy(zero_copy_only=False)
