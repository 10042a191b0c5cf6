"""`recsys evaluate`: offline full-ranking evaluation of an exported artifact.

It ranks with ONNX Runtime exactly as the inference server does: the user's history is what
the artifact holds; users with no usable history get popularity scores; items already in the
history are excluded; a held-out item outside the item index counts as a miss.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from recsys.artifact import HISTORIES, ItemIndex, read_jsonl, read_manifest
from recsys.schema import FIRST_TOKEN, OOV, PAD
from trainer.metrics import rank_of_targets, ranking_metrics

__all__ = ["evaluate_artifact", "read_pairs"]


def read_pairs(path: str | Path) -> pd.DataFrame:
    """user_id,item_id rows (other columns ignored) from CSV, TSV or Parquet, ids as strings."""
    path = Path(path)
    if path.suffix == ".parquet":
        df = pd.read_parquet(path)
    elif path.suffix in (".csv", ".tsv", ".txt", ".inter"):
        df = pd.read_csv(path, sep="\t" if path.suffix in (".tsv", ".inter") else ",", dtype=str)
        df.columns = [c.split(":")[0] for c in df.columns]
    else:
        raise ValueError(f"{path}: unsupported format; use .csv, .tsv or .parquet")
    missing = {"user_id", "item_id"} - set(df.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    df = df[["user_id", "item_id"]].dropna().astype(str)
    if df.empty:
        raise ValueError(f"{path}: no user_id,item_id rows")
    return df


def evaluate_artifact(artifact_dir: str | Path, test_path: str | Path, *, k: int = 10, batch: int = 256) -> dict:
    from recsys.onnx_session import ModelSession

    manifest = read_manifest(artifact_dir)
    index = ItemIndex.read(artifact_dir)
    session = ModelSession(artifact_dir, manifest, device="cpu", threads=0)
    token = {item: i + FIRST_TOKEN for i, item in enumerate(index.item_ids)}
    histories = {
        row["user_id"]: np.array([token.get(i, OOV) for i in row["item_ids"]], dtype=np.int64)
        for row in read_jsonl(Path(artifact_dir) / HISTORIES)
    }
    test = read_pairs(test_path)
    popularity = np.asarray(index.popularity, dtype=np.float32)
    max_len, n = manifest.max_history, manifest.num_items
    ranks = np.empty(len(test))
    fallback = 0
    rows = list(test.itertuples(index=False))
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        scores = np.empty((len(chunk), n), dtype=np.float32)
        excluded = np.zeros((len(chunk), n), dtype=bool)
        windows, model_rows = [], []
        for r, (user, _) in enumerate(chunk):
            tokens = histories.get(user, np.zeros(0, dtype=np.int64))
            known = tokens[tokens >= FIRST_TOKEN]
            excluded[r, known - FIRST_TOKEN] = True
            if len(known) == 0:
                scores[r] = popularity
                fallback += 1
                continue
            window = np.full(max_len, PAD, dtype=np.int64)
            tail = tokens[-max_len:]
            window[-len(tail) :] = tail
            windows.append(window)
            model_rows.append(r)
        if windows:
            scores[model_rows] = session.scores(np.stack(windows))
        targets = np.array([token.get(item, FIRST_TOKEN) - FIRST_TOKEN for _, item in chunk])
        chunk_ranks = rank_of_targets(scores, targets, excluded)
        chunk_ranks[[item not in token for _, item in chunk]] = np.inf
        ranks[start : start + len(chunk)] = chunk_ranks
    result: dict = {"users": int(test["user_id"].nunique()), "cases": len(test)}
    result.update(ranking_metrics(ranks, k))
    result["popularity_fallback_cases"] = fallback
    result["unknown_item_cases"] = int((~test["item_id"].isin(token)).sum())
    return result
