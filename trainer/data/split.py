"""Leave-last-out split: each user's last interaction (by time, ties in file order) is the test.

With `target_events` (event kinds, e.g. ("purchase",)) the test is each user's last event of
those kinds instead, and the user's events after it are dropped: they happened after the
test event, so training on them would leak it (a view of the bought item right after the
purchase, say). Every event before it, whatever its kind, stays in train.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from trainer.data.tables import load_tables

__all__ = ["check_event_kinds", "leave_last_out", "write_leave_last_out"]


def check_event_kinds(wanted, known, what: str = "target_events") -> None:
    """ValueError naming the known kinds when `wanted` holds a kind that is not in `known`."""
    unknown = sorted(set(wanted) - set(known))
    if unknown:
        shown = ", ".join(map(repr, sorted(known))) if known else "none (the data has no event column)"
        raise ValueError(f"{what}: unknown event kind(s) {', '.join(map(repr, unknown))}; known: {shown}")


def leave_last_out(
    interactions: pd.DataFrame, target_events: tuple[str, ...] = ()
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """interactions already stable-sorted by time -> (train, test).

    Without `target_events`: users with one event stay in train, the others lose their last
    event to test. With it: a user's test row is their last event of those kinds that has at
    least one event before it; train keeps that user's events before it; users without such an
    event stay whole in train. ValueError when a kind is not in the data."""
    if not target_events:
        counts = interactions.groupby("user_id", sort=False)["item_id"].transform("size")
        last = interactions[counts >= 2].groupby("user_id", sort=False).tail(1).index
        return interactions.drop(index=last), interactions.loc[last]
    known = interactions["event"].unique().tolist() if "event" in interactions.columns else []
    check_event_kinds(target_events, known)
    frame = interactions.reset_index(drop=True)
    position = frame.groupby("user_id", sort=False).cumcount().to_numpy()  # (R,) rank in the user's events
    hits = frame[frame["event"].isin(list(target_events)).to_numpy() & (position >= 1)]
    last = hits.groupby("user_id", sort=False).tail(1).index.to_numpy()  # row positions of the tests
    cut = pd.Series(position[last], index=frame["user_id"].to_numpy()[last])
    limit = frame["user_id"].map(cut).to_numpy(dtype=np.float64)  # NaN: user without a test row
    train = np.isnan(limit) | (position < limit)
    return frame[train], frame.iloc[last]


def write_leave_last_out(
    interactions: str | Path,
    out_dir: str | Path,
    columns: dict[str, str] | None = None,
    target_events: tuple[str, ...] = (),
) -> dict:
    """Cleans `interactions` (your column names mapped by `columns`, see load_tables), splits it
    (`target_events`: see leave_last_out), writes train.csv and test.csv, with standard column
    names, into `out_dir`."""
    tables = load_tables(interactions, columns=columns)
    train, test = leave_last_out(tables.interactions, tuple(target_events))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train.to_csv(out / "train.csv", index=False)
    test.to_csv(out / "test.csv", index=False)
    result = {
        "train": str(out / "train.csv"),
        "test": str(out / "test.csv"),
        "train_rows": len(train),
        "test_rows": len(test),
        "users": int(tables.interactions["user_id"].nunique()),
    }
    if target_events:
        result["dropped_after_test"] = len(tables.interactions) - len(train) - len(test)
    return result
