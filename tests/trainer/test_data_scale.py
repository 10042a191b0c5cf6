"""The columnar interaction reader (trainer.data.columnar via load_tables): Parquet directories
and row groups read in batches, and the same cleaned table as read_table + clean_interactions
gives for every format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trainer.data import columnar
from trainer.data.columnar import Source, id_codes
from trainer.data.tables import clean_interactions, load_tables, read_table

# Messy rows: padded and blank ids, "007" vs "7", ISO dates, fractional and unparsable
# timestamps, bad ratings, exact duplicates (also once parsed), ties in time.
MESSY_CSV = """user_id,item_id,timestamp,rating
007,10,100,4
7,10,100,4
 8 ,11,100,5
,12,101,3
   ,12,101,3
9,,102,1
9,13,yesterday,2
9,13,,2
10,14,103,great
10,14,104,
10,14,105,inf
007,10,100,4
007,10,100.0,+4.0
11,15,2024-01-01T00:00:00Z,2
11,16,106.9,1
"12","a,b",2024-01-01T01:00:00+01:00,.5
13,17,1e2,5.
"""


def _same(left: pd.DataFrame, right: pd.DataFrame) -> None:
    assert list(left.columns) == list(right.columns)
    for column in left.columns:
        assert left[column].tolist() == right[column].tolist(), column
    assert left["timestamp"].dtype == np.int64


def test_csv_columnar_reader_matches_pandas_reader(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text(MESSY_CSV)
    fast = load_tables(path)
    reference, report = clean_interactions(read_table(path, "interactions"), str(path))
    _same(fast.interactions, reference)
    assert fast.report == report
    assert fast.report.dropped == {
        "missing user_id": 2,
        "missing item_id": 1,
        "unparsable timestamp": 2,
        "unparsable rating": 3,
        "exact duplicate": 2,
    }
    assert fast.interactions["user_id"].tolist() == ["007", "7", "8", "13", "11", "11", "12"]
    assert fast.interactions["item_id"].tolist()[6] == "a,b"  # a quoted delimiter stays in the id
    assert fast.interactions["timestamp"].tolist() == [100, 100, 100, 100, 106, 1704067200, 1704067200]


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("u.data", "1\t10\t4\t881250949\n1\t11\t5\t881250950\n2\t10\t3\t881250940\n"),
        ("toy.inter", 'user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t10\t4\t5\n2\t"x\t3\t4\n'),
        ("r.tsv", "userId\tmovieId\ttimestamp\n1\t10\t5\n2\t11\t4\n"),
        ("r.csv", "uid;iid;ts\n1;10;5\n2;11;4\n"),
    ],
)
def test_text_formats_match_pandas_reader(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    fast = load_tables(path)
    reference, report = clean_interactions(read_table(path, "interactions"), str(path))
    _same(fast.interactions, reference)
    assert fast.report == report


def _parts(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    """A Spark-like directory: hive partitions, several part files, _SUCCESS and .crc files."""
    root = tmp_path / "events"
    frames = []
    for day, rows in (("2024-01-01", [(1, 10, 5, 4.0), (2, 11, 3, 5.0)]), ("2024-01-02", [(1, 12, 9, 3.0)])):
        for part in range(2):
            frame = pd.DataFrame(rows, columns=["userId", "item", "ts", "rating"])
            frame["ts"] += part * 100
            frame.loc[0, "item"] += part  # a duplicate across files for part 0 rows 1..
            folder = root / f"day={day}"
            folder.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), folder / f"part-{part:05d}.parquet")
            frames.append(frame)
    (root / "_SUCCESS").write_text("")
    (root / "day=2024-01-01" / ".part-00000.parquet.crc").write_bytes(b"\x00crc")
    return root, pd.concat(frames, ignore_index=True)


def test_parquet_directory_reads_every_part(tmp_path: Path) -> None:
    root, frames = _parts(tmp_path)
    tables = load_tables(root)
    expected, _ = clean_interactions(frames.rename(columns={"userId": "user_id", "item": "item_id", "ts": "timestamp"}))
    got = tables.interactions.sort_values(["timestamp", "user_id", "item_id"], kind="stable").reset_index(drop=True)
    want = expected.sort_values(["timestamp", "user_id", "item_id"], kind="stable").reset_index(drop=True)
    _same(got, want)
    assert tables.report.rows_read == len(frames) == 6
    assert set(tables.interactions["user_id"]) == {"1", "2"}  # int ids as plain strings


def test_parquet_directory_by_column_mapping_and_missing_column(tmp_path: Path) -> None:
    root = tmp_path / "d"
    root.mkdir()
    frame = pd.DataFrame({"who": ["a", "b"], "what": ["x", "y"], "when": [2, 1]})
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), root / "part-0.parquet")
    tables = load_tables(root, columns={"user_id": "who", "item_id": "what", "timestamp": "when"})
    assert tables.interactions["user_id"].tolist() == ["b", "a"]
    with pytest.raises(
        ValueError, match=r"lacks required column\(s\) \['user_id', 'item_id', 'timestamp'\].*found \['who'.*--columns"
    ):
        load_tables(root)


def test_big_parquet_file_read_by_row_groups_in_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    n = 5_000
    frame = pd.DataFrame(
        {
            "user_id": rng.integers(0, 300, n),
            "item_id": rng.integers(0, 50, n).astype(float),  # floats: ids lose ".0"
            "timestamp": pd.to_datetime(rng.integers(0, 10**6, n), unit="s"),
            "rating": rng.integers(1, 6, n).astype(float),
        }
    )
    frame.loc[::97, "item_id"] = np.nan
    path = tmp_path / "big.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, row_group_size=700)
    monkeypatch.setattr(columnar, "BATCH_ROWS", 512)
    batches = list(Source(path, parquet=True).batches(["user_id"]))
    assert len(batches) > 5 and all(b.num_rows <= 700 for b in batches)
    assert batches[0].schema.names == ["user_id"]  # only the columns asked for
    fast = load_tables(path)
    reference, report = clean_interactions(read_table(path, "interactions"))
    _same(fast.interactions, reference)
    assert fast.report.dropped["missing item_id"] == len(frame.loc[::97])
    assert "." not in "".join(fast.interactions["item_id"])


def test_small_row_groups_are_read_together_up_to_a_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    n = 2_000
    frame = pd.DataFrame(
        {
            "user_id": [f" u{u} " if u % 7 == 0 else f"u{u}" for u in rng.integers(0, 90, n)],  # padded: stripped
            "item_id": [f"i{i}" for i in rng.integers(0, 40, n)],
            "timestamp": rng.integers(0, 10**6, n),
            "rating": rng.integers(1, 6, n).astype(float),
        }
    )
    frame.loc[::53, "user_id"] = None
    path = tmp_path / "groups.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, row_group_size=100)
    monkeypatch.setattr(columnar, "BATCH_ROWS", 512)
    sizes = [b.num_rows for b in Source(path, parquet=True).batches(["user_id", "rating"])]
    assert sizes == [600, 600, 600, 200]  # whole row groups, at least BATCH_ROWS rows while they last
    fast = load_tables(path)
    reference, _ = clean_interactions(read_table(path, "interactions"))
    _same(fast.interactions, reference)
    assert fast.report.dropped["missing user_id"] == len(frame.loc[::53])


def test_unreadable_tables_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(ValueError, match="broken.parquet"):
        load_tables(bad)
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("user_id,item_id,timestamp\n1,2,3\n1,2,3,4,5\n")
    with pytest.raises(ValueError, match="ragged.csv"):
        load_tables(ragged)
    with pytest.raises(FileNotFoundError):
        load_tables(tmp_path / "absent.csv")


def test_id_codes_merge_values_that_are_the_same_id() -> None:
    codes, ids = id_codes(pd.Series([7, 7.0, " 7", "007", None, np.nan, "", "x"], dtype=object))
    assert ids.tolist() == ["7", "007", "x"]
    assert codes.tolist() == [0, 0, 0, 1, -1, -1, -1, 2]


def test_item_index_histories_and_history_rows_match_a_plain_reference() -> None:
    from trainer.data.encoding import build_item_index, encode_histories, history_rows

    rng = np.random.default_rng(1)
    n = 400
    frame = pd.DataFrame(
        {
            "user_id": pd.Series([f"u{k}" for k in rng.integers(0, 30, n)], dtype="str"),
            "item_id": pd.Series([f"{k:03d}" for k in rng.integers(0, 40, n)], dtype="str"),
            "timestamp": np.sort(rng.integers(0, 1000, n)),
        }
    )
    index = build_item_index(frame, None)
    counts = frame["item_id"].value_counts()
    expected = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))  # popularity, ties by id
    assert list(index.item_ids) == [i for i, _ in expected]
    assert list(index.popularity) == [c for _, c in expected]
    token = {item: k + 2 for k, item in enumerate(index.item_ids)}
    users, sequences = encode_histories(frame, index)
    assert users == list(dict.fromkeys(frame["user_id"]))  # order of first appearance
    for user, sequence in zip(users, sequences, strict=True):
        mine = frame[frame["user_id"] == user]
        assert sequence.dtype == np.int64 and sequence.tolist() == [token[i] for i in mine["item_id"]]
    rows = list(history_rows(frame))
    assert [r["user_id"] for r in rows] == users
    first = frame[frame["user_id"] == users[0]]
    assert rows[0]["item_ids"] == first["item_id"].tolist()
    assert rows[0]["timestamps"] == first["timestamp"].tolist() and type(rows[0]["timestamps"][0]) is int
    empty = frame.head(0)
    assert encode_histories(empty, build_item_index(empty, None)) == ([], [])
    assert list(history_rows(empty)) == []
    with pytest.raises(ValueError, match="not in the item index"):
        encode_histories(frame, build_item_index(frame.head(5), None))


def test_ranking_histories_match_the_per_event_definition() -> None:
    from trainer.data.examples import _histories

    rng = np.random.default_rng(3)
    users = rng.integers(0, 7, 300)
    items = rng.integers(2, 50, 300)
    for length in (0, 1, 4):
        got = _histories(users, items, length)
        assert got.shape == (300, length)
        for row in range(300):
            earlier = items[:row][users[:row] == users[row]][-length:] if length else items[:0]
            expected = [0] * (length - len(earlier)) + earlier.tolist()  # left-padded with PAD
            assert got[row].tolist() == expected
    assert _histories(users[:0], items[:0], 3).shape == (0, 3)


@pytest.mark.parametrize("presorted", [False, True])
@pytest.mark.parametrize("times", [40, 1_500])  # long runs of equal times, or short ones
def test_cleaning_matches_a_row_by_row_reference_on_random_data(presorted: bool, times: int) -> None:
    rng = np.random.default_rng(7)
    n = 3_000
    stamps = rng.integers(0, times, n)  # ties, and duplicates among them
    if presorted:
        stamps = np.sort(stamps)
    raw = pd.DataFrame(
        {
            "user_id": pd.Series([f"u{k}" for k in rng.integers(0, 5, n)], dtype="str"),
            "item_id": pd.Series([f"{k}" for k in rng.integers(0, 6, n)], dtype="str"),
            "timestamp": stamps + rng.choice([0.0, 0.25], n),  # fractions floor to the same second
            "rating": rng.choice([1.0, 2.0, -0.0, 0.0], n),
        }
    )
    cleaned, report = clean_interactions(raw)
    reference = raw.assign(timestamp=np.floor(raw["timestamp"]).astype("int64"), rating=raw["rating"] + 0.0)
    reference = reference[~reference.duplicated(keep="first")]
    reference = reference.sort_values("timestamp", kind="stable").reset_index(drop=True)
    _same(cleaned, reference)
    assert report.dropped == {"exact duplicate": n - len(reference)} and n - len(reference) > 10


@pytest.mark.parametrize("size", [1, 300, 70_000, 3_000_000])
def test_group_order_is_a_stable_sort_by_code(size: int) -> None:
    from trainer.data.columnar import group_order

    codes = np.random.default_rng(size).integers(0, size, 20_000)
    assert np.array_equal(group_order(codes, size), np.argsort(codes, kind="stable"))
