"""Leave-last-out split: each user's last interaction (by time, ties in file order) is the test."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from trainer.data.tables import load_tables

__all__ = ["leave_last_out", "write_leave_last_out"]


def leave_last_out(interactions: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """interactions already stable-sorted by time -> (train, test); users with one event stay in train."""
    counts = interactions.groupby("user_id", sort=False)["item_id"].transform("size")
    last = interactions[counts >= 2].groupby("user_id", sort=False).tail(1).index
    return interactions.drop(index=last), interactions.loc[last]


def write_leave_last_out(interactions: str | Path, out_dir: str | Path, columns: dict[str, str] | None = None) -> dict:
    """Cleans `interactions` (your column names mapped by `columns`, see load_tables), splits it,
    writes train.csv and test.csv, with standard column names, into `out_dir`."""
    tables = load_tables(interactions, columns=columns)
    train, test = leave_last_out(tables.interactions)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train.to_csv(out / "train.csv", index=False)
    test.to_csv(out / "test.csv", index=False)
    return {
        "train": str(out / "train.csv"),
        "test": str(out / "test.csv"),
        "train_rows": len(train),
        "test_rows": len(test),
        "users": int(tables.interactions["user_id"].nunique()),
    }
