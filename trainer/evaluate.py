"""`recsys evaluate`: offline full-ranking evaluation of an exported artifact.

It ranks with ONNX Runtime exactly as the inference server does: the user's history is what
the artifact holds; users with no usable history get popularity scores; items already in the
history are excluded; a held-out item outside the item index counts as a miss.

Besides accuracy it reports long-tail exposure: catalogue coverage, the Gini
of recommendation counts, the share of tail items in the lists and recall on tail targets,
where the tail is every item outside the most popular 20 % by training interactions
(`trainer.metrics.tail_items`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from recsys.artifact import HISTORIES, ItemIndex, read_jsonl, read_manifest
from recsys.schema import FIRST_TOKEN, OOV, PAD
from trainer.metrics import (
    HEAD_SHARE,
    catalogue_metrics,
    long_tail_metrics,
    rank_of_targets,
    ranking_metrics,
    top_k,
)

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


def evaluate_artifact(
    artifact_dir: str | Path,
    test_path: str | Path,
    *,
    k: int = 10,
    protocol: str = "full",
    negatives: int = 100,
    sampling: str = "uniform",
    seed: int = 0,
    batch: int = 256,
) -> dict:
    """Metrics of the artifact's model on `test_path` rows.

    protocol "full" ranks the target against every item not in the user's history; "sampled"
    ranks it against `negatives` items drawn (uniformly or by popularity) from those, the
    protocol of many papers, reported for comparison only: it flatters every model.
    """
    from recsys.onnx_session import ModelSession

    if protocol not in ("full", "sampled"):
        raise ValueError(f"protocol must be full or sampled, got {protocol!r}")
    if sampling not in ("uniform", "popularity"):
        raise ValueError(f"sampling must be uniform or popularity, got {sampling!r}")
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
    rng = np.random.default_rng(seed)
    draw = popularity.astype(np.float64) + 1e-9 if sampling == "popularity" else np.ones(n)
    ranks = np.empty(len(test))
    target_cols = np.array([token[item] - FIRST_TOKEN if item in token else -1 for item in test["item_id"]])
    candidates = np.empty(len(test))
    tops = []
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
        tops.append(top_k(scores, k, excluded))
        targets = np.array([token.get(item, FIRST_TOKEN) - FIRST_TOKEN for _, item in chunk])
        if protocol == "sampled":
            excluded = _sampled_only(excluded, targets, negatives, draw, rng)
        chunk_ranks = rank_of_targets(scores, targets, excluded)
        chunk_ranks[[item not in token for _, item in chunk]] = np.inf
        ranks[start : start + len(chunk)] = chunk_ranks
        candidates[start : start + len(chunk)] = (~excluded).sum(axis=1) - 1
    result: dict = {"users": int(test["user_id"].nunique()), "cases": len(test), "protocol": protocol}
    if protocol == "sampled":
        result["negatives"], result["sampling"] = negatives, sampling
    result.update(ranking_metrics(ranks, k, candidates))
    top = np.concatenate(tops)
    result.update(catalogue_metrics(top, popularity, k))
    result.update(long_tail_metrics(top, popularity, ranks, target_cols, k))
    result["tail_definition"] = f"items outside the most popular {HEAD_SHARE:.0%} by training interactions"
    result["popularity_fallback_cases"] = fallback
    result["unknown_item_cases"] = int((~test["item_id"].isin(token)).sum())
    return result


def _sampled_only(excluded: np.ndarray, targets: np.ndarray, negatives: int, draw: np.ndarray, rng) -> np.ndarray:
    """Excludes everything but the target and `negatives` sampled unseen items, per row."""
    keep = np.ones_like(excluded)
    for r in range(len(targets)):
        allowed = ~excluded[r]
        allowed[targets[r]] = False
        pool = np.flatnonzero(allowed)
        if len(pool):
            p = draw[pool] / draw[pool].sum()
            chosen = rng.choice(pool, size=min(negatives, len(pool)), replace=False, p=p)
            keep[r, chosen] = False
        keep[r, targets[r]] = excluded[r, targets[r]]
    return keep
