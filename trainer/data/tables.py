"""Reading, cleaning and describing the raw tables the trainer learns from.

Three tables, each with standard column names whatever format it came in:

    interactions  user_id, item_id, timestamp[, rating, event, weight]   who touched what, and when
    users         user_id[, age, gender, occupation, zip_code, ...]
    items         item_id[, title, year, genres, ...]

Other spellings of the standard names are renamed (case-insensitive): userid, user, uid ->
user_id; itemid, item, iid, movieid, movie_id -> item_id; time, ts, datetime -> timestamp;
event_type, behavior, behaviour, behavior_type -> event;
sex -> gender, zip, zipcode -> zip_code; movie_title -> title, release_year -> year, class,
genre -> genres. Any other names are mapped with `columns` ({standard: yours}, the CLI's
--columns), applied before the aliases.

Accepted formats: CSV, TSV (separated by comma, tab, semicolon or pipe, detected from the
header line), RecBole atomic files (.inter/.user/.item) and the
GroupLens MovieLens-100K files (u.data/u.user/u.item). IDs are strings everywhere ("007" stays
"007"; 7 from Parquet is "7", never "7.0"); multi-valued columns are '|'-joined strings
("Action|Comedy"); missing values are NaN. Feature columns whose text is all numbers become
float64, except code-like columns (zip_code, *_id, *_code, values with leading zeros) and
text columns (title, name, description).
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from recsys.schema import FeatureKind, FeatureSpec
from trainer.data.columnar import (
    Source,
    arrow_numbers,
    arrow_seconds,
    factorize,
    header_names,
    id_codes,
    read_columns,
    repeated_rows,
)

__all__ = [
    "GROUPLENS_GENRES",
    "CleaningReport",
    "Tables",
    "clean_interactions",
    "feature_rows",
    "infer_feature_specs",
    "load_tables",
    "read_table",
]

TableKind = Literal["interactions", "users", "items"]

KEYS: dict[str, str] = {"interactions": "user_id", "users": "user_id", "items": "item_id"}
STANDARD_COLUMNS: dict[str, tuple[str, ...]] = {
    "interactions": ("user_id", "item_id", "timestamp", "rating", "event", "weight"),
    "users": ("user_id", "age", "gender", "occupation", "zip_code"),
    "items": ("item_id", "title", "year", "genres"),
}
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "interactions": ("user_id", "item_id", "timestamp"),
    "users": ("user_id",),
    "items": ("item_id",),
}
# Standard columns with a numeric meaning: anything that is not a number there is missing
# (RecBole's ML-100K has release_year "unkonwn" and "V").
_NUMERIC_STANDARD: dict[str, tuple[str, ...]] = {"users": ("age",), "items": ("year",)}
# Free text: served as is, never split on '|' or turned into numbers (a film is titled "187").
TEXT_NAMES = frozenset({"title", "name", "description"})
_CODE_NAMES = frozenset({"id", "zip", "zipcode", "zip_code", "postcode", "postal_code"})

_ID_ALIASES = {"userid": "user_id", "user": "user_id", "uid": "user_id"}
_ITEM_ALIASES = {"itemid": "item_id", "item": "item_id", "iid": "item_id", "movieid": "item_id", "movie_id": "item_id"}
# Other spellings seen in public datasets (lower-cased) -> standard name, per table.
_ALIASES: dict[str, dict[str, str]] = {
    "interactions": {
        **_ID_ALIASES,
        **_ITEM_ALIASES,
        "time": "timestamp",
        "ts": "timestamp",
        "datetime": "timestamp",
        **dict.fromkeys(("event_type", "behavior", "behaviour", "behavior_type"), "event"),
    },
    "users": {**_ID_ALIASES, "sex": "gender", "zip": "zip_code", "zipcode": "zip_code"},
    "items": {**_ITEM_ALIASES, "movie_title": "title", "release_year": "year", "class": "genres", "genre": "genres"},
}

# u.item's 19 genre flags, in file order.
GROUPLENS_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
_ACCEPTED = (
    ".csv, .tsv, .parquet, RecBole atomic files (.inter, .user, .item) and "
    "GroupLens MovieLens-100K files (u.data, u.user, u.item)"
)
# Read text as text: no "NA"/"null" guessing, no numeric ids; only empty fields are missing.
_TEXT_OPTS: dict[str, Any] = {"dtype": str, "keep_default_na": False, "na_values": [""]}
_GROUPLENS_DATA = ("user_id", "item_id", "rating", "timestamp")
# Runs of equal timestamps up to this long are searched for duplicates row against row.
_SHORT_RUN = 16
MAX_EVENT_LENGTH = 64  # characters of an event kind (the feature service's limit too)


@dataclass
class CleaningReport:
    """What load_tables/clean_interactions read, kept and dropped (reason -> row count)."""

    source: str
    rows_read: int
    dropped: dict[str, int]
    users: int
    items: int
    interactions: int

    def summary(self) -> str:
        """A few lines for humans: what was read, what is left, and why rows were dropped."""
        lost = self.rows_read - self.interactions
        lines = [
            f"source: {self.source}",
            f"interaction rows read: {self.rows_read:,}",
            f"kept: {self.interactions:,} interactions, {self.users:,} users, {self.items:,} items",
            f"interaction rows dropped: {lost:,}" if lost else "interaction rows dropped: none",
        ]
        lines += [f"  {reason}: {count:,}" for reason, count in self.dropped.items()]
        return "\n".join(lines)


@dataclass
class Tables:
    """Cleaned tables; interactions are stable-sorted by timestamp (ties keep file order)."""

    interactions: pd.DataFrame
    users: pd.DataFrame | None
    items: pd.DataFrame | None
    report: CleaningReport


def read_table(path: str | Path, kind: TableKind, columns: dict[str, str] | None = None) -> pd.DataFrame:
    """Read one raw table and give it the standard columns of `kind` (see module docstring).

    Standard columns come first, in standard order, then any others in file order. Interaction
    timestamps and ratings are returned as read (clean_interactions parses them). `columns`
    ({standard: yours}) renames your columns; mapped names absent from this table are ignored.
    Raises ValueError for an unsupported format or when a required column is missing (naming
    the columns found and --columns).
    """
    path = Path(path)
    if kind not in KEYS:
        raise ValueError(f"unknown table kind {kind!r}; expected one of {sorted(KEYS)}")
    suffix = path.suffix.lower()
    if path.is_dir():
        df = Source(path, parquet=True).read_all()
    elif path.name in ("u.data", "u.user", "u.item"):
        df = _read_grouplens(path)
    elif suffix in (".inter", ".user", ".item"):
        df = _read_recbole(path, kind)
    elif suffix in (".csv", ".tsv"):
        df = pd.read_csv(path, sep=_delimiter(path, "," if suffix == ".csv" else "\t"), **_TEXT_OPTS)
    elif suffix in (".parquet", ".pq"):
        df = pd.read_parquet(path)
    else:
        raise ValueError(f"{path}: unsupported table format; accepted: {_ACCEPTED}")
    df.columns = _column_names([str(c) for c in df.columns], kind, columns, path)
    for column in ("user_id", "item_id"):
        if column in df.columns:
            df[column] = _ids_to_str(df[column])
    if kind != "interactions":
        df = _numeric_features(df, kind)
    standard = [c for c in STANDARD_COLUMNS[kind] if c in df.columns]
    return df[standard + [c for c in df.columns if c not in standard]].reset_index(drop=True)


def clean_interactions(df: pd.DataFrame, source: str = "") -> tuple[pd.DataFrame, CleaningReport]:
    """Drop and count bad rows, parse types, and sort by time.

    Each dropped row is counted once, under the first reason that applies, in this order:
    "missing user_id", "missing item_id" (missing or blank), "unparsable timestamp" (missing,
    or neither a number of unix seconds nor an ISO-8601 datetime), "unparsable rating" (only
    when a rating column exists: missing, non-numeric or infinite), "exact duplicate" (all
    output columns equal after parsing; the first is kept). Fractional seconds are floored.
    Returns columns user_id, item_id (str), timestamp (int64), and rating (float64) when the
    input had one, stable-sorted by timestamp with ties in input order, index reset.

    An `event` column (the kind of each event: view, click, purchase, ...) comes out as str and
    a `weight` column as float64. They are data, not noise, so a bad value is an error, not a
    dropped row: ValueError for a missing, blank or over-long (> MAX_EVENT_LENGTH characters)
    event kind and for a missing, negative or non-finite weight.
    """
    missing = [c for c in REQUIRED_COLUMNS["interactions"] if c not in df.columns]
    if missing:
        raise ValueError(f"{source or 'interactions'}: lacks required column(s) {missing}")
    keep = np.ones(len(df), dtype=bool)
    dropped: dict[str, int] = {}

    def drop(reason: str, bad: np.ndarray) -> None:
        count = int((bad & keep).sum())
        if count:
            dropped[reason] = count
            keep[bad] = False

    # Ids as int codes into their distinct values: dedup, counts and sorting work on integers.
    users, user_ids = id_codes(df["user_id"])
    items, item_ids = id_codes(df["item_id"])
    seconds = _unix_seconds(df["timestamp"])
    drop("missing user_id", users < 0)
    drop("missing item_id", items < 0)
    drop("unparsable timestamp", ~np.isfinite(seconds))
    rating = None
    if "rating" in df.columns:
        rating = _numbers(df["rating"])
        drop("unparsable rating", ~np.isfinite(rating))
    event, kinds = _event_codes(df["event"], source) if "event" in df.columns else (None, None)
    weight = _weights(df["weight"], source) if "weight" in df.columns else None
    rows = np.flatnonzero(keep)
    stamps = np.floor(seconds[rows]).astype("int64")
    # Time order first (exports are often sorted already: then no sort at all), ties in input order.
    reordered = bool(len(stamps)) and not (stamps[1:] >= stamps[:-1]).all()
    if reordered:
        order = np.argsort(stamps, kind="stable")
        rows, stamps = rows[order], stamps[order]
    user_of, item_of = users[rows], items[rows]
    # Optional columns that also tell rows apart, in output order: rating, event, weight.
    extra = {
        name: values[rows]
        for name, values in (("rating", rating), ("event", event), ("weight", weight))
        if values is not None
    }
    repeated = _repeated_in_time_order(stamps, user_of * len(item_ids) + item_of, list(extra.values()))
    if repeated.any():
        dropped["exact duplicate"] = int(repeated.sum())
        unique = ~repeated
        rows, stamps, user_of, item_of = rows[unique], stamps[unique], user_of[unique], item_of[unique]
        extra = {name: values[unique] for name, values in extra.items()}
    columns: dict[str, Any] = {
        "user_id": _id_column(user_of, user_ids),
        "item_id": _id_column(item_of, item_ids),
        "timestamp": stamps,
    }
    for name, values in extra.items():
        columns[name] = _id_column(values, kinds) if name == "event" else values
    out = pd.DataFrame(columns, copy=False)
    report = CleaningReport(
        source=source,
        rows_read=len(df),
        dropped=dropped,
        users=_distinct(user_of, len(user_ids)),
        items=_distinct(item_of, len(item_ids)),
        interactions=len(out),
    )
    return out, report


def _repeated_in_time_order(stamps: np.ndarray, pairs: np.ndarray, others: list[np.ndarray]) -> np.ndarray:
    """bool per row of a time-ordered table (ties in input order): whether an earlier row has
    the same timestamp, (user, item) pair and `others` values (rating, event code, weight). Duplicates share a timestamp, so a row is
    compared with the rows 1, 2, ... places before it while their time is its own (the usual
    case: a few); when some time holds more than `_SHORT_RUN` rows, all tied rows go through a
    hash sort (repeated_rows) instead."""
    n = len(stamps)
    repeated = np.zeros(n, dtype=bool)
    for lag in range(1, min(_SHORT_RUN, n - 1) + 1):
        at = np.flatnonzero(stamps[lag:] == stamps[:-lag]) + lag  # sorted: same time = same run
        if not len(at):
            return repeated
        if lag == _SHORT_RUN:
            break  # a long run: fall back below
        same = pairs[at] == pairs[at - lag]
        for values in others:
            same &= values[at] == values[at - lag]
        repeated[at[same]] = True
    else:
        return repeated
    tied = np.zeros(n, dtype=bool)
    same_time = stamps[1:] == stamps[:-1]
    tied[1:] |= same_time
    tied[:-1] |= same_time
    rows = np.flatnonzero(tied)
    key = [pairs[rows], stamps[rows]] + [values[rows] for values in others]
    repeated[:] = False
    repeated[rows[repeated_rows(key)]] = True
    return repeated


def tables_or_load(
    tables: Tables | None,
    interactions: str | Path | None,
    users: str | Path | None = None,
    items: str | Path | None = None,
    log=print,
    columns: dict[str, str] | None = None,
) -> Tables:
    """`tables` when given, else the tables loaded from the paths (their summary logged)."""
    if tables is not None:
        return tables
    if interactions is None:
        raise ValueError("give interactions (a path) or tables")
    tables = load_tables(interactions, users, items, columns=columns)
    log(tables.report.summary())
    return tables


def load_tables(
    interactions: str | Path,
    users: str | Path | None = None,
    items: str | Path | None = None,
    *,
    columns: dict[str, str] | None = None,
) -> Tables:
    """Read and clean the interaction table and, when given, the user and item tables.

    `columns` ({standard: yours}) maps your column names in every table (read_table).
    `interactions` may also be a directory of Parquet files (hive-partitioned or not); only
    its standard columns are read, in record batches (trainer.data.columnar).

    Feature tables lose rows with a missing key ("users: missing user_id") and keep the last
    row of each duplicated key ("users: duplicate user_id"), counted in the report's dropped.
    The report's users/items counts are the distinct ids of the cleaned interactions.
    """
    inter, report = clean_interactions(_read_interactions(interactions, columns), str(interactions))
    sources = [str(interactions)]
    tables: dict[str, pd.DataFrame | None] = {"users": None, "items": None}
    for kind, path in (("users", users), ("items", items)):
        if path is not None:
            sources.append(str(path))
            tables[kind] = _one_row_per_key(read_table(path, kind, columns), kind, report.dropped)
    report.source = ", ".join(sources)
    return Tables(interactions=inter, users=tables["users"], items=tables["items"], report=report)


def infer_feature_specs(df: pd.DataFrame, key: str) -> tuple[FeatureSpec, ...]:
    """One FeatureSpec per non-key column, in column order.

    Numeric dtype -> NUMERIC, mean and population std over finite values (std 0 or no values
    -> 1.0). Otherwise, over non-missing values as stripped text: a column named title, name
    or description -> TEXT (checked first: a title may contain '|'); any value containing '|'
    -> MULTI_CATEGORICAL, vocabulary the sorted distinct tokens; more than 100 rows with
    distinct values over half the rows -> TEXT (no vocabulary); else CATEGORICAL, vocabulary
    by descending frequency then value, all values kept.
    """
    if key not in df.columns:
        raise ValueError(f"key column {key!r} not in {list(df.columns)}")
    specs: list[FeatureSpec] = []
    for name in df.columns:
        if name == key:
            continue
        column = df[name]
        if pd.api.types.is_numeric_dtype(column):
            values = column.to_numpy(dtype="float64", na_value=np.nan)
            values = values[np.isfinite(values)]
            mean = float(values.mean()) if values.size else 0.0
            std = float(values.std()) if values.size else 1.0
            specs.append(FeatureSpec(name, FeatureKind.NUMERIC, mean=mean, std=std if std > 0 else 1.0))
            continue
        texts = [t for t in (_text(v) for v in column.tolist()) if t is not None]
        if name in TEXT_NAMES:
            specs.append(FeatureSpec(name, FeatureKind.TEXT))
        elif any("|" in t for t in texts):
            tokens = {tok for t in texts for tok in _split_multi(t)}
            specs.append(FeatureSpec(name, FeatureKind.MULTI_CATEGORICAL, vocabulary=tuple(sorted(tokens))))
        elif len(df) > 100 and len(set(texts)) > 0.5 * len(df):
            specs.append(FeatureSpec(name, FeatureKind.TEXT))
        else:
            counts = Counter(texts)
            vocabulary = sorted(counts, key=lambda v: (-counts[v], v))
            specs.append(FeatureSpec(name, FeatureKind.CATEGORICAL, vocabulary=tuple(vocabulary)))
    return tuple(specs)


def feature_rows(df: pd.DataFrame, specs: tuple[FeatureSpec, ...], key: str) -> Iterator[dict]:
    """Yield {key: id, "features": {name: value}} per row with a key, in row order.

    Values are plain Python: str for CATEGORICAL/TEXT (stripped), float for NUMERIC, list[str]
    for MULTI_CATEGORICAL (split on '|'). Missing values (None, NaN, "", non-finite or
    unparsable numbers, empty lists) are left out of "features".
    """
    absent = [c for c in (key, *(s.name for s in specs)) if c not in df.columns]
    if absent:
        raise ValueError(f"column(s) {absent} not in {list(df.columns)}")
    ids = _ids_to_str(df[key]).tolist()
    columns = [(spec, df[spec.name].tolist()) for spec in specs]
    for row, entity in enumerate(ids):
        if not isinstance(entity, str):
            continue
        features: dict[str, Any] = {}
        for spec, values in columns:
            value = _feature_value(spec.kind, values[row])
            if value is not None:
                features[spec.name] = value
        yield {key: entity, "features": features}


def _delimiter(path: Path, default: str) -> str:
    """The separator of a text table: the most frequent of , tab ; | in its header line
    (column names rarely hold one), `default` when none occurs."""
    with path.open(encoding="utf-8", errors="replace") as f:
        header = f.readline()
    counts = {d: header.count(d) for d in ",\t;|"}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else default


def _read_grouplens(path: Path) -> pd.DataFrame:
    """u.data (tab) / u.user / u.item ('|', latin-1) from the GroupLens ml-100k.zip."""
    opts = {**_TEXT_OPTS, "header": None, "quoting": csv.QUOTE_NONE}
    if path.name == "u.data":
        return pd.read_csv(path, sep="\t", names=list(_GROUPLENS_DATA), **opts)
    if path.name == "u.user":
        return pd.read_csv(path, sep="|", names=list(STANDARD_COLUMNS["users"]), **opts)
    names = ["item_id", "title", "release_date", "video_release_date", "imdb_url", *GROUPLENS_GENRES]
    raw = pd.read_csv(path, sep="|", names=names, encoding="latin-1", **opts)
    flags = raw[list(GROUPLENS_GENRES)].eq("1").to_numpy()
    genres = ["|".join(g for g, on in zip(GROUPLENS_GENRES, row, strict=True) if on) or np.nan for row in flags]
    return pd.DataFrame(
        {
            "item_id": raw["item_id"],
            "title": raw["title"],
            # "01-Jan-1995" -> 1995; item 267 ("unknown") has no date.
            "year": raw["release_date"].str.extract(r"(\d{4})\s*$", expand=False),
            "genres": pd.Series(genres, index=raw.index, dtype="str"),
        }
    )


def _read_recbole(path: Path, kind: TableKind) -> pd.DataFrame:
    """A RecBole atomic file: tab-separated, header cells `name:type`."""
    df = pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, encoding="utf-8", **_TEXT_OPTS)
    names = {column: column.partition(":")[0] for column in df.columns}
    types = {names[column]: column.partition(":")[2] for column in df.columns}
    df = df.rename(columns=names)
    for name, ftype in types.items():
        standard = _ALIASES[kind].get(name.lower(), name)
        # token_seq is RecBole's multi-valued token list, space-separated; titles are
        # declared token_seq too but are sentences, so they keep their spaces.
        if ftype == "token_seq" and standard not in TEXT_NAMES:
            df[name] = df[name].str.split().str.join("|").astype("str")
        elif ftype == "float" and kind != "interactions":
            df[name] = pd.to_numeric(df[name], errors="coerce").astype("float64")
    return df


def _standard_names(df: pd.DataFrame, kind: TableKind) -> pd.DataFrame:
    """Rename known aliases to standard names; an existing standard column wins."""
    renames: dict[str, str] = {}
    taken = {str(c).strip() for c in df.columns}
    for column in df.columns:
        name = str(column).strip()
        target = _ALIASES[kind].get(name.lower(), name.lower() if name.lower() in STANDARD_COLUMNS[kind] else name)
        if target != name and target in taken:
            target = name
        renames[column] = target
        taken.add(target)
    return df.rename(columns=renames)


def _numeric_features(df: pd.DataFrame, kind: TableKind) -> pd.DataFrame:
    """Turn all-number text columns of a feature table into float64 (see module docstring)."""
    key = KEYS[kind]
    for name in df.columns:
        column = df[name]
        if name == key or name in TEXT_NAMES or pd.api.types.is_numeric_dtype(column):
            continue
        if name in _NUMERIC_STANDARD.get(kind, ()):
            df[name] = pd.to_numeric(_stripped(column), errors="coerce").astype("float64")
            continue
        if name in _CODE_NAMES or name.endswith(("_id", "_code")):
            continue
        text = _stripped(column).dropna()
        if text.empty or text.str.match(r"[+-]?0\d").any():
            continue  # leading zeros mean a code ("02138"), not a quantity
        numbers = pd.to_numeric(text, errors="coerce")
        if numbers.notna().all():
            df[name] = pd.to_numeric(_stripped(column), errors="coerce").astype("float64")
    return df


def _one_row_per_key(df: pd.DataFrame, kind: TableKind, dropped: dict[str, int]) -> pd.DataFrame:
    key = KEYS[kind]
    missing = df[key].isna().to_numpy()
    duplicate = df.duplicated(key, keep="last").to_numpy() & ~missing
    for reason, bad in ((f"{kind}: missing {key}", missing), (f"{kind}: duplicate {key}", duplicate)):
        if bad.any():
            dropped[reason] = int(bad.sum())
    return df[~(missing | duplicate)].reset_index(drop=True)


def _interaction_source(path: Path) -> Source:
    """Where and how the columnar reader finds an interaction table (formats as read_table)."""
    suffix = path.suffix.lower()
    if path.is_dir() or suffix in (".parquet", ".pq"):
        return Source(path, parquet=True)
    if path.name == "u.data":
        return Source(path, delimiter="\t", quoted=False, names=_GROUPLENS_DATA, header=False)
    if suffix == ".inter":
        header = header_names(path, "\t", quoted=False)
        return Source(path, delimiter="\t", quoted=False, names=tuple(c.partition(":")[0] for c in header))
    if suffix in (".csv", ".tsv"):
        return Source(path, delimiter=_delimiter(path, "," if suffix == ".csv" else "\t"))
    raise ValueError(f"{path}: unsupported table format; accepted: {_ACCEPTED}")


def _read_interactions(path: str | Path, columns: dict[str, str] | None) -> pd.DataFrame:
    """The standard interaction columns of `path`, read column-wise (ids as Categoricals,
    timestamp and rating as float64); clean_interactions takes it like read_table's frame."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    source = _interaction_source(path)
    try:
        found = source.column_names()
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the table: {exc}") from exc
    standard = _column_names(found, "interactions", columns, path)
    first = {}
    for name, final in zip(found, standard, strict=True):
        first.setdefault(final, name)
    ids = {first[c]: c for c in ("user_id", "item_id", "event") if c in first}
    others = {first[c]: c for c in ("timestamp", "rating", "weight") if c in first}
    return read_columns(source, ids, others)


def _column_names(found: list[str], kind: TableKind, columns: dict[str, str] | None, path: Path) -> list[str]:
    """Standard names for the columns `found` (your `columns` first, then aliases); ValueError
    naming the columns found and --columns when a required one is missing."""
    renames = {yours: standard for standard, yours in (columns or {}).items()}
    named = _standard_names(pd.DataFrame(columns=[renames.get(c, c) for c in found]), kind)
    names = [str(c) for c in named.columns]
    missing = [c for c in REQUIRED_COLUMNS[kind] if c not in names]
    if missing:
        example = ",".join(f"{c}=YOUR_NAME" for c in missing)
        raise ValueError(
            f"{path}: {kind} table lacks required column(s) {missing}; found {found}: "
            f"name yours with --columns {example}"
        )
    return names


def _event_codes(column: pd.Series, source: str) -> tuple[np.ndarray, np.ndarray]:
    """(int64 code per row, the distinct kinds as str); ValueError for a missing, blank or
    over-long kind. Work per row is a hash (factorize) or none (a Categorical); the checks
    run over the distinct kinds only."""
    codes, values = factorize(column)
    where = source or "interactions"
    missing = np.flatnonzero(codes < 0)
    if len(missing):
        raise ValueError(
            f"{where}: {len(missing):,} event(s) without a kind in column event (first at data row "
            f"{missing[0] + 1}); give every row a kind (view, click, purchase, ...) or leave the column out"
        )
    kinds = np.array([v if isinstance(v, str) else str(v) for v in values], dtype=object)
    used = np.zeros(len(kinds), dtype=bool)
    used[codes] = True
    for i in np.flatnonzero(used):
        kind = kinds[i]
        if not kind.strip() or len(kind) > MAX_EVENT_LENGTH:
            first = int(np.flatnonzero(codes == i)[0])
            what = "blank" if not kind.strip() else f"{len(kind)} characters long, more than {MAX_EVENT_LENGTH}"
            raise ValueError(f"{where}: event kind {kind[:80]!r} at data row {first + 1} is {what}")
    return codes, kinds


def _weights(column: pd.Series, source: str) -> np.ndarray:
    """float64 per row; ValueError naming the first missing, unparsable, negative or infinite weight."""
    weight = _numbers(column)
    bad = np.flatnonzero(~(np.isfinite(weight) & (weight >= 0)))
    if len(bad):
        raise ValueError(
            f"{source or 'interactions'}: {len(bad):,} weight(s) that are not finite numbers >= 0 "
            f"(first at data row {bad[0] + 1}: {column.iloc[bad[0]]})"
        )
    return weight


def _unix_seconds(column: pd.Series) -> np.ndarray:
    """float64 unix seconds per row, NaN where missing or unparsable."""
    if pd.api.types.is_datetime64_any_dtype(column):
        stamps = column if column.dt.tz is not None else column.dt.tz_localize("UTC")
        return _since_epoch(stamps)
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        return column.to_numpy(dtype="float64", na_value=np.nan)
    text = _arrow_text(column)
    if text is not None:
        return arrow_seconds(text)
    text = _stripped(column)  # mixed Python values: converted one by one
    seconds = pd.to_numeric(text, errors="coerce").to_numpy(
        dtype="float64", na_value=np.nan, copy=True
    )  # written below
    dates = np.isnan(seconds) & text.notna().to_numpy()
    if dates.any():
        parsed = pd.to_datetime(text[dates], format="ISO8601", utc=True, errors="coerce")
        seconds[dates] = _since_epoch(parsed)
    return seconds


def _numbers(column: pd.Series) -> np.ndarray:
    """float64 per row: numbers, or text holding a number; NaN otherwise (booleans too)."""
    if pd.api.types.is_bool_dtype(column):
        return np.full(len(column), np.nan)
    if pd.api.types.is_numeric_dtype(column):
        return column.to_numpy(dtype="float64", na_value=np.nan)
    text = _arrow_text(column)
    if text is not None:
        return arrow_numbers(text)
    return pd.to_numeric(_stripped(column), errors="coerce").to_numpy(dtype="float64", na_value=np.nan)


def _arrow_text(column: pd.Series) -> pa.Array | pa.ChunkedArray | None:
    """The column as an Arrow string array when it holds only text (and missing values)."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        column = column.astype(column.cat.categories.dtype)
    try:
        array = pa.array(column, from_pandas=True)
    except (pa.ArrowException, TypeError, ValueError):
        return None
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type) or pa.types.is_null(array.type):
        return array.cast(pa.string())
    return None


def _since_epoch(stamps: pd.Series) -> np.ndarray:
    delta = (stamps.dt.tz_convert("UTC") - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)
    return delta.to_numpy(dtype="float64", na_value=np.nan)


def _stripped(column: pd.Series) -> pd.Series:
    """The column as text with surrounding blanks removed; blank -> NaN."""
    if isinstance(column.dtype, pd.StringDtype):  # Arrow-backed text: stripped column-wise
        text = column.str.strip()
        return text.mask(text == "")
    return pd.Series([_text(v) for v in column.tolist()], index=column.index, dtype="str")


def _ids_to_str(column: pd.Series) -> pd.Series:
    """IDs as str: integral floats lose ".0" (a Parquet int column with a gap reads as float)."""
    codes, ids = id_codes(column)
    return pd.Series(_id_column(codes, ids), index=column.index)


def _id_column(codes: np.ndarray, ids: np.ndarray) -> pd.Series:
    """str per code (-1 -> missing), built column-wise by Arrow from the distinct ids."""
    # large_string is what pandas' str dtype holds: no conversion on the way in.
    values = pa.array(ids.tolist(), type=pa.large_string())
    if not len(values):
        return pa.nulls(len(codes), pa.large_string()).to_pandas()
    indices = pa.array(codes, mask=codes < 0) if (codes < 0).any() else pa.array(codes)
    return values.take(indices).to_pandas()


def _distinct(codes: np.ndarray, size: int) -> int:
    return int(np.count_nonzero(np.bincount(codes, minlength=size))) if len(codes) else 0


def _text(value: Any) -> str | None:
    """Stripped str of a scalar; None for missing (None, NaN, NA, NaT, blank)."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    text = str(value).strip()
    return text or None


def _split_multi(text: str) -> list[str]:
    return [t for t in (part.strip() for part in text.split("|")) if t]


def _feature_value(kind: FeatureKind, value: Any) -> str | float | list[str] | None:
    text = _text(value)
    if text is None:
        return None
    if kind is FeatureKind.NUMERIC:
        try:
            number = float(value) if not isinstance(value, str) else float(text)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    if kind is FeatureKind.MULTI_CATEGORICAL:
        return _split_multi(text) or None
    return text
