"""trainer.data.tables: readers for every format, cleaning, feature-spec inference, feature rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys.schema import FeatureKind, FeatureSpec
from trainer.data.tables import (
    GROUPLENS_GENRES,
    clean_interactions,
    feature_rows,
    infer_feature_specs,
    load_tables,
    read_table,
)

INTERACTIONS = [("007", "42", "881250949", "3"), ("8", "43", "881250950", "5")]


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_text(text, encoding=encoding)
    return path


def _assert_standard_interactions(df: pd.DataFrame) -> None:
    assert list(df.columns) == ["user_id", "item_id", "timestamp", "rating"]
    assert df["user_id"].tolist() == ["007", "8"]
    assert df["item_id"].tolist() == ["42", "43"]
    cleaned, report = clean_interactions(df)
    assert cleaned["timestamp"].tolist() == [881250949, 881250950]
    assert cleaned["rating"].tolist() == [3.0, 5.0]
    assert report.dropped == {}


@pytest.mark.parametrize("suffix, sep", [(".csv", ","), (".tsv", "\t")])
def test_delimited_interactions_keep_string_ids(tmp_path: Path, suffix: str, sep: str) -> None:
    # Columns in a non-standard order and spelling: userId/movieId are common aliases.
    lines = [sep.join(["rating", "userId", "movieId", "timestamp"])]
    lines += [sep.join([r, u, i, t]) for u, i, t, r in INTERACTIONS]
    df = read_table(_write(tmp_path / f"ratings{suffix}", "\n".join(lines) + "\n"), "interactions")
    _assert_standard_interactions(df)


def test_parquet_numeric_ids_become_plain_strings(tmp_path: Path) -> None:
    path = tmp_path / "inter.parquet"
    pd.DataFrame(
        {"user_id": [7, 8], "item_id": [42.0, 43.0], "timestamp": [881250949, 881250950], "rating": [3.0, 5.0]}
    ).to_parquet(path)
    df = read_table(path, "interactions")
    assert df["user_id"].tolist() == ["7", "8"]
    assert df["item_id"].tolist() == ["42", "43"]  # never "42.0"


def test_parquet_datetime_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "inter.parquet"
    stamps = pd.to_datetime(["2024-01-01 00:00:00", "2024-01-01 00:00:01"])
    raw = pd.DataFrame({"user_id": ["a", "b"], "item_id": ["x", "y"], "timestamp": stamps})
    raw.to_parquet(path)
    cleaned, _ = clean_interactions(read_table(path, "interactions"))
    assert cleaned["timestamp"].tolist() == [1704067200, 1704067201]
    assert "rating" not in cleaned.columns


def test_recbole_atomic_files(tmp_path: Path) -> None:
    inter = _write(
        tmp_path / "toy.inter",
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        + "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, t, r in INTERACTIONS),
    )
    _assert_standard_interactions(read_table(inter, "interactions"))

    item = _write(
        tmp_path / "toy.item",
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "1\tToy Story\t1995\tAnimation Children's Comedy\n"
        "267\tunkonwn\tunkonwn\tunknown\n",
    )
    items = read_table(item, "items")
    assert list(items.columns) == ["item_id", "title", "year", "genres"]
    assert items["title"].tolist() == ["Toy Story", "unkonwn"]  # spaces kept in titles
    assert items["genres"].tolist() == ["Animation|Children's|Comedy", "unknown"]
    assert items["year"].iloc[0] == 1995.0 and np.isnan(items["year"].iloc[1])

    user = _write(
        tmp_path / "toy.user",
        "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n1\t24\tM\ttechnician\t02138\n",
    )
    users = read_table(user, "users")
    assert users.iloc[0].tolist() == ["1", 24.0, "M", "technician", "02138"]


def test_grouplens_files(tmp_path: Path) -> None:
    data = _write(tmp_path / "u.data", "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, t, r in INTERACTIONS))
    _assert_standard_interactions(read_table(data, "interactions"))

    users = read_table(_write(tmp_path / "u.user", "1|24|M|technician|85711\n2|53|F|other|T8H1N\n"), "users")
    assert list(users.columns) == ["user_id", "age", "gender", "occupation", "zip_code"]
    assert users["age"].tolist() == [24.0, 53.0]
    assert users["zip_code"].tolist() == ["85711", "T8H1N"]

    flags = ["0"] * len(GROUPLENS_GENRES)
    toy = flags.copy()
    toy[GROUPLENS_GENRES.index("Animation")] = toy[GROUPLENS_GENRES.index("Comedy")] = "1"
    unknown = flags.copy()
    unknown[0] = "1"
    text = (
        "1|Toy Story (1995)|01-Jan-1995||http://imdb/toy|" + "|".join(toy) + "\n"
        "267|unknown||||" + "|".join(unknown) + "\n"
        "543|Misérables, Les (1995)|01-Jan-1995||http://imdb/mis|" + "|".join(flags) + "\n"
    )
    items = read_table(_write(tmp_path / "u.item", text, encoding="latin-1"), "items")
    assert list(items.columns) == ["item_id", "title", "year", "genres"]
    assert items["title"].tolist() == ["Toy Story (1995)", "unknown", "Misérables, Les (1995)"]
    assert items["year"].iloc[0] == 1995.0 and items["year"].iloc[1:2].isna().all()
    assert items["genres"].iloc[0] == "Animation|Comedy"
    assert items["genres"].iloc[1] == "unknown"
    assert pd.isna(items["genres"].iloc[2])


def test_unsupported_format_names_file_and_formats(tmp_path: Path) -> None:
    path = _write(tmp_path / "ratings.xlsx", "x")
    with pytest.raises(ValueError, match=r"ratings\.xlsx.*\.csv.*\.parquet.*u\.data"):
        read_table(path, "interactions")


def test_missing_required_columns_are_named(tmp_path: Path) -> None:
    path = _write(tmp_path / "r.csv", "user_id,rating\n1,3\n")
    with pytest.raises(ValueError, match=r"item_id.*timestamp"):
        read_table(path, "interactions")


def test_malformed_rows_are_dropped_and_counted(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "r.csv",
        "\n".join(
            [
                "user_id,item_id,timestamp,rating",
                "1,10,100,4",  # kept
                ",10,101,4",  # missing user_id
                "   ,10,101,4",  # blank user_id
                "2,,102,4",  # missing item_id
                "3,11,yesterday,4",  # unparsable timestamp
                "3,11,,4",  # missing timestamp
                "4,12,103,great",  # unparsable rating
                "4,12,104,",  # missing rating
                "4,12,105,inf",  # infinite rating
                "1,10,100,4",  # exact duplicate of the first row
                "1,10,100.0,4.0",  # the same row once parsed
                "5,13,2024-01-01T00:00:00Z,2",  # ISO-8601 -> unix seconds
                "5,14,106.9,1",  # fractional seconds floor
            ]
        )
        + "\n",
    )
    tables = load_tables(path)
    report = tables.report
    assert report.dropped == {
        "missing user_id": 2,
        "missing item_id": 1,
        "unparsable timestamp": 2,
        "unparsable rating": 3,
        "exact duplicate": 2,
    }
    assert (report.rows_read, report.interactions, report.users, report.items) == (13, 3, 2, 3)
    df = tables.interactions
    assert df["timestamp"].tolist() == [100, 106, 1704067200]
    assert df["timestamp"].dtype == np.int64 and df["rating"].dtype == np.float64
    summary = report.summary()
    for text in ("2 users", "3 items", "3 interactions", "dropped: 10", "unparsable rating: 3"):
        assert text in summary


def test_stable_sort_keeps_file_order_for_ties() -> None:
    raw = pd.DataFrame(
        {"user_id": ["c", "a", "b", "z"], "item_id": ["1", "2", "3", "4"], "timestamp": ["20", "10", "10", "5"]}
    )
    df, report = clean_interactions(raw, source="memory")
    assert df["user_id"].tolist() == ["z", "a", "b", "c"]
    assert df.index.tolist() == [0, 1, 2, 3]
    assert list(df.columns) == ["user_id", "item_id", "timestamp"]
    assert report.source == "memory" and report.dropped == {}


def test_feature_tables_dedupe_keep_last_and_count(tmp_path: Path) -> None:
    inter = _write(tmp_path / "i.csv", "user_id,item_id,timestamp\n1,10,5\n")
    users = _write(tmp_path / "users.csv", "user_id,age,city\n1,20,Oslo\n,30,Rome\n1,21,Bergen\n2,40,Paris\n")
    tables = load_tables(inter, users=users)
    assert tables.users is not None and tables.items is None
    assert tables.users["user_id"].tolist() == ["1", "2"]
    assert tables.users["city"].tolist() == ["Bergen", "Paris"]
    assert tables.report.dropped == {"users: missing user_id": 1, "users: duplicate user_id": 1}
    assert tables.report.source == f"{inter}, {users}"


def test_feature_csv_numbers_and_codes(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "items.csv",
        "item_id,price,year,zip_code,shelf,title\n007,1.5,1995,02138,01,187\n008,2.5,,10001,12,Heat\n",
    )
    items = read_table(path, "items")
    assert items["item_id"].tolist() == ["007", "008"]
    assert items["price"].dtype == np.float64
    assert items["zip_code"].tolist() == ["02138", "10001"]  # named like a code
    assert items["shelf"].tolist() == ["01", "12"]  # leading zero: a code, not a number
    assert items["title"].tolist() == ["187", "Heat"]


def _feature_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_id": ["1", "2", "3", "4"],
            "price": [1.0, 3.0, np.nan, 2.0],
            "constant": [5, 5, 5, 5],
            "color": pd.Series(["red", "blue", "red", None], dtype="str"),
            "tags": pd.Series(["a|b", "c", None, "b| a"], dtype="str"),
            "title": pd.Series(["One", "Two", "", "Four"], dtype="str"),
        }
    )


def test_infer_feature_specs_kinds_and_stats() -> None:
    specs = infer_feature_specs(_feature_frame(), "item_id")
    assert [s.name for s in specs] == ["price", "constant", "color", "tags", "title"]
    price, constant, color, tags, title = specs
    assert price.kind is FeatureKind.NUMERIC
    assert price.mean == pytest.approx(2.0) and price.std == pytest.approx(np.std([1, 3, 2]))
    assert (constant.kind, constant.mean, constant.std) == (FeatureKind.NUMERIC, 5.0, 1.0)
    assert color == FeatureSpec("color", FeatureKind.CATEGORICAL, vocabulary=("red", "blue"))
    assert tags == FeatureSpec("tags", FeatureKind.MULTI_CATEGORICAL, vocabulary=("a", "b", "c"))
    assert title == FeatureSpec("title", FeatureKind.TEXT)


def test_categorical_vocabulary_order_and_high_cardinality_text() -> None:
    df = pd.DataFrame(
        {
            "user_id": [str(i) for i in range(200)],
            "tier": ["b"] * 100 + ["a"] * 50 + ["c"] * 49 + ["d"],
            "note": [f"note {i}" for i in range(200)],
        }
    )
    tier, note = infer_feature_specs(df, "user_id")
    assert tier.vocabulary == ("b", "a", "c", "d")  # frequency, then value; singletons kept
    assert note.kind is FeatureKind.TEXT and note.vocabulary == ()
    small = df.head(100)  # 100 distinct values in 100 rows is not "> 100 rows"
    assert infer_feature_specs(small, "user_id")[1].kind is FeatureKind.CATEGORICAL


def test_feature_rows_plain_values_and_missing_omitted() -> None:
    df = _feature_frame()
    rows = list(feature_rows(df, infer_feature_specs(df, "item_id"), "item_id"))
    assert rows[0] == {
        "item_id": "1",
        "features": {"price": 1.0, "constant": 5.0, "color": "red", "tags": ["a", "b"], "title": "One"},
    }
    assert rows[2] == {"item_id": "3", "features": {"constant": 5.0, "color": "red"}}
    assert rows[3]["features"]["tags"] == ["b", "a"]
    assert "color" not in rows[3]["features"]
    assert all(type(v) is float for r in rows for k, v in r["features"].items() if k in ("price", "constant"))


def test_feature_rows_requires_columns() -> None:
    spec = FeatureSpec("missing", FeatureKind.NUMERIC)
    with pytest.raises(ValueError, match="missing"):
        list(feature_rows(_feature_frame(), (spec,), "item_id"))
