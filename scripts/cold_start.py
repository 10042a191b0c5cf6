"""Cold start on ML-100K: how well does a content model rank items it never saw interactions of?

Protocol (`make cold-start`):
1. Hold out `--holdout` (10 %) of the items with interactions, drawn at random (`--seed`): every
   interaction with them is removed, and so is their row of the item table. The content model
   (content_sasrec) trains on the rest and is exported: it has never heard of those items.
2. The held-out items are added to the artifact by re-export from the full item table
   (trainer/content.py `add_items`: content only, nothing retrained): the serving story.
3. Test cases: for every user who interacted with a held-out item, the first such interaction
   in time; the input is the user's events before it (all of them training items; users with
   none are counted and skipped). The exported ONNX graph scores every item.
4. Metrics: HR@10 and NDCG@10 of the held-out item ranked among all held-out items (the new
   arrivals shelf), and, stricter, among the whole catalogue with the user's history excluded.

Baselines, using only what is known of a new item (no interactions by construction):
- random: expected HR@10 = 10 / |held-out| (NDCG likewise, exact);
- genre popularity: an item scores the mean, over its genres, of the average number of
  training interactions per training item of that genre (ties broken at random);
- genre + year popularity: the average training interactions of training items sharing the
  item's genre set and release-year bucket, falling back to genre popularity.
The target (issue 8) is at least 3x the genre-popularity baseline's HR@10.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recsys.artifact import ItemIndex
from recsys.schema import FIRST_TOKEN, PAD
from trainer.content import add_items
from trainer.data import load_tables
from trainer.pipeline import train_and_export
from trainer.train import TrainConfig


def rank_metrics(ranks: np.ndarray, k: int) -> dict[str, float]:
    """ranks: 0-based rank of each target -> HR@k, NDCG@k."""
    hit = ranks < k
    return {f"hr@{k}": float(hit.mean()), f"ndcg@{k}": float(np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0).mean())}


def random_expectation(n: int, k: int) -> dict[str, float]:
    """HR@k and NDCG@k of a uniformly random ranking of n candidates (exact expectations)."""
    return {f"hr@{k}": min(k, n) / n, f"ndcg@{k}": sum(1.0 / math.log2(r + 2) for r in range(min(k, n))) / n}


def ranks_among(scores: np.ndarray, targets: np.ndarray, allowed: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """scores (U, N); targets (U,) columns; allowed (U, N) bool -> 0-based rank among allowed,
    ties broken at random (a constant score cannot win by luck of the order)."""
    noise = rng.random(scores.shape) * 1e-6 * (np.abs(scores).max() + 1.0)
    s = np.where(allowed, scores + noise, -np.inf)
    target = s[np.arange(len(targets)), targets][:, None]
    return (s > target).sum(axis=1)


def genre_popularity(items: pd.DataFrame, counts: dict[str, int], year_buckets: bool) -> dict[str, float]:
    """item_id -> popularity score known from content only (see module docstring)."""
    genres = {i: tuple(sorted(str(g).split("|"))) if isinstance(g, str) else () for i, g in zip(items["item_id"], items["genres"], strict=True)}
    years = dict(zip(items["item_id"], items["year"], strict=True))
    train = [i for i in items["item_id"] if i in counts]
    per_genre: dict[str, list[int]] = {}
    for i in train:
        for g in genres[i]:
            per_genre.setdefault(g, []).append(counts[i])
    avg = {g: float(np.mean(v)) for g, v in per_genre.items()}
    out = {i: float(np.mean([avg.get(g, 0.0) for g in genres[i]])) if genres[i] else 0.0 for i in items["item_id"]}
    if not year_buckets:
        return out
    def bucket(y):
        return -1 if not np.isfinite(y) else int(y // 5)
    groups: dict[tuple, list[int]] = {}
    for i in train:
        groups.setdefault((genres[i], bucket(years[i])), []).append(counts[i])
    return {i: float(np.mean(groups[key])) if (key := (genres[i], bucket(years[i]))) in groups else out[i] for i in items["item_id"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/ml-100k")
    ap.add_argument("--out", default="runs/cold_start")
    ap.add_argument("--holdout", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--config", default="{}", help="JSON of extra TrainConfig settings")
    args = ap.parse_args()
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tables = load_tables(data / "interactions.csv", None, data / "items.csv")
    inter, items = tables.interactions, tables.items
    rng = np.random.default_rng(args.seed)
    catalogue = np.array(sorted(inter["item_id"].unique()))
    held = set(rng.choice(catalogue, size=round(args.holdout * len(catalogue)), replace=False).tolist())
    train_inter = inter[~inter["item_id"].isin(held)]
    train_items = items[~items["item_id"].isin(held)]
    (out / "split").mkdir(exist_ok=True)
    train_inter.to_csv(out / "split" / "train_interactions.csv", index=False)
    train_items.to_csv(out / "split" / "train_items.csv", index=False)
    items.to_csv(out / "split" / "all_items.csv", index=False)

    cfg = TrainConfig(**{"model": "content_sasrec", "epochs": args.epochs, "seed": args.seed, "bucket": True,
                         "patience": 2, **json.loads(args.config)})
    tick = time.perf_counter()
    train_and_export(out / "split" / "train_interactions.csv", out / "trained", cfg,
                     items=out / "split" / "train_items.csv", progress=False)
    train_s = time.perf_counter() - tick
    manifest = add_items(out / "trained", out / "split" / "all_items.csv", out / "served")
    index = ItemIndex.read(out / "served")
    col = {item: j for j, item in enumerate(index.item_ids)}
    held_cols = np.array(sorted(col[i] for i in held))
    assert all(index.popularity[j] == 0 for j in held_cols), "held-out items must have no training interactions"

    # Test cases: each user's first interaction with a held-out item; input = the events before it.
    histories, targets, skipped = [], [], 0
    for _, group in inter.groupby("user_id", sort=False):
        items_seq = group["item_id"].tolist()
        first = next((p for p, i in enumerate(items_seq) if i in held), None)
        if first is None:
            continue
        if first == 0:
            skipped += 1
            continue
        histories.append([col[i] for i in items_seq[:first]])
        targets.append(col[items_seq[first]])
    targets = np.array(targets)
    max_len = manifest.max_history
    window = np.full((len(histories), max_len), PAD, dtype=np.int64)
    for r, h in enumerate(histories):
        tail = np.array(h[-max_len:]) + FIRST_TOKEN
        window[r, -len(tail):] = tail
    import onnxruntime as ort

    session = ort.InferenceSession(str(out / "served" / "model.onnx"), providers=["CPUExecutionProvider"])
    scores = np.concatenate([session.run(None, {"item_seq": window[i : i + 256]})[0] for i in range(0, len(window), 256)])

    n = len(index.item_ids)
    shelf = np.zeros((len(targets), n), dtype=bool)
    shelf[:, held_cols] = True
    full = np.ones((len(targets), n), dtype=bool)
    for r, h in enumerate(histories):
        full[r, h] = False
    counts = inter[~inter["item_id"].isin(held)]["item_id"].value_counts().to_dict()
    results: dict[str, dict] = {"content_sasrec": {
        "among_held_out": rank_metrics(ranks_among(scores, targets, shelf, rng), args.k),
        "full_catalogue": rank_metrics(ranks_among(scores, targets, full, rng), args.k)}}
    for name, year in (("genre_popularity", False), ("genre_year_popularity", True)):
        pop = genre_popularity(items, counts, year)
        base = np.tile(np.array([pop.get(i, 0.0) for i in index.item_ids]), (len(targets), 1))
        results[name] = {"among_held_out": rank_metrics(ranks_among(base, targets, shelf, rng), args.k)}
    results["random"] = {"among_held_out": random_expectation(len(held_cols), args.k)}
    key = f"hr@{args.k}"
    ratio = results["content_sasrec"]["among_held_out"][key] / results["genre_popularity"]["among_held_out"][key]
    report = {
        "protocol": "first interaction with a held-out item per user; ranked among held-out items and among all",
        "held_out_items": len(held_cols), "catalogue": n, "test_users": len(targets),
        "skipped_users_without_history": skipped, "train_seconds_contended": round(train_s),
        "config": json.loads(args.config), "epochs": args.epochs, "seed": args.seed,
        "results": results, "ratio_hr_vs_genre_popularity": round(ratio, 2),
    }
    (out / "cold_start.json").write_text(json.dumps(report, indent=2))
    print(f"{len(held_cols)} held-out items, {len(targets)} test users ({skipped} skipped: no earlier events)")
    print(f"{'':24s} {'HR@10 held-out':>15s} {'NDCG@10 held-out':>17s} {'HR@10 full':>11s}")
    for name, r in results.items():
        a, f = r["among_held_out"], r.get("full_catalogue")
        print(f"{name:24s} {a[key]:15.4f} {a[f'ndcg@{args.k}']:17.4f} {f[key] if f else float('nan'):11.4f}")
    print(f"content_sasrec / genre popularity HR@{args.k}: {ratio:.2f}x")


if __name__ == "__main__":
    main()
