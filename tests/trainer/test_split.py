import pandas as pd

from trainer.data.split import leave_last_out, write_leave_last_out


def test_last_event_by_time_with_ties_in_file_order(tmp_path):
    path = tmp_path / "i.csv"
    path.write_text(
        "user_id,item_id,timestamp\n"
        "a,1,30\n"
        "a,2,10\n"
        "a,3,30\n"  # ties with item 1 at t=30; later in the file, so it is the last event
        "b,9,5\n"  # one event only: stays in train, nothing to test on
        "c,4,1\n"
        "c,5,2\n"
    )
    result = write_leave_last_out(path, tmp_path / "out")
    train = pd.read_csv(result["train"], dtype=str)
    test = pd.read_csv(result["test"], dtype=str)
    assert sorted(zip(test.user_id, test.item_id)) == [("a", "3"), ("c", "5")]
    assert sorted(zip(train.user_id, train.item_id)) == [("a", "1"), ("a", "2"), ("b", "9"), ("c", "4")]
    assert result["users"] == 3 and result["test_rows"] == 2


def test_split_keeps_every_row_exactly_once():
    df = pd.DataFrame({"user_id": list("aabbb"), "item_id": list("12345"), "timestamp": [1, 2, 1, 2, 3]})
    train, test = leave_last_out(df)
    assert len(train) + len(test) == len(df)
    assert set(train.index) | set(test.index) == set(df.index)


def test_split_cli_reads_a_parquet_directory(tmp_path):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq
    from click.testing import CliRunner

    from recsys.cli import main

    parts = tmp_path / "events"
    parts.mkdir()
    rows = [("a", "1", 1), ("a", "2", 2), ("b", "3", 1), ("b", "4", 5), ("c", "5", 3)]
    for k in range(2):
        chunk = rows[k * 3 : k * 3 + 3]
        table = pa.table(
            {"user_id": [r[0] for r in chunk], "item_id": [r[1] for r in chunk], "ts": [r[2] for r in chunk]}
        )
        pq.write_table(table, parts / f"part-{k}.parquet")
    result = CliRunner().invoke(main, ["data", "split", "--interactions", str(parts), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["train_rows"], summary["test_rows"], summary["users"]) == (3, 2, 3)
    test = pd.read_csv(summary["test"], dtype=str)
    assert sorted(zip(test.user_id, test.item_id)) == [("a", "2"), ("b", "4")]
