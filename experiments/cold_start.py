"""Cold start on ML-100K: how well does a content model rank items it never saw interactions of?

Protocol (`make cold-start`), for each seed in `--seeds` (a seed draws its own held-out items):
1. Test items: `--holdout` (10 %) of the items with interactions, drawn at random: every
   interaction with them is removed, and so is their row of the item table. Validation items:
   another `--val-holdout` (10 %), drawn from the rest and removed the same way. The content
   model (content_sasrec) trains on the remaining items and never hears of either set.
2. The epoch is selected on the validation items only (`cold_hr@10`, computed every epoch by
   trainer/families/content.py `ColdShelf`: each validation case's item ranked among the validation
   items by its content vector, test items left out of the histories). Test items are touched
   once, after training.
3. Both held-out sets are added to the artifact by re-export from the full item table
   (trainer/export/add_items.py `add_items`: content only, nothing retrained): the serving story.
4. Test cases: for every user who interacted with a test item, the first such interaction in
   time; the input is the user's events before it (users with none are counted and skipped).
   The exported ONNX graph scores every item.
5. Metrics: HR@10 and NDCG@10 of the test item ranked among all test items (the new arrivals
   shelf), and, stricter, among the whole catalogue with the user's history excluded.

Baselines, using only what is known of a new item (no interactions by construction) and every
interaction not with a test item (validation items' included, so they know more than the model):
- random: expected HR@10 = 10 / |held-out| (NDCG likewise, exact);
- genre popularity: an item scores the mean, over its genres, of the average number of
  interactions per known item of that genre (ties broken at random);
- genre + year popularity: the average interactions of known items sharing the item's genre
  set and 5-year release bucket, falling back to genre popularity.
A yardstick, not a baseline: the test items ranked by their true interaction counts (which no
cold-start method can know).
The goal is at least 3x the genre-popularity baseline's HR@10, as a mean over seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.artifact import ItemIndex
from recsys.schema import FIRST_TOKEN, PAD
from trainer.data.encoding import build_item_index
from trainer.data.tables import feature_rows, infer_feature_specs, load_tables
from trainer.export.add_items import add_items
from trainer.families.content import (
    CONTENT_CHECKPOINT,
    ColdShelf,
    fit_content,
    load_content_model,
    with_catalogue,
)
from trainer.families.next_item import TrainConfig
from trainer.pipeline import train_and_export


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
    genres = {
        i: tuple(sorted(str(g).split("|"))) if isinstance(g, str) else ()
        for i, g in zip(items["item_id"], items["genres"], strict=True)
    }
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
    return {
        i: float(np.mean(groups[key])) if (key := (genres[i], bucket(years[i]))) in groups else out[i]
        for i in items["item_id"]
    }


def first_cases(inter: pd.DataFrame, targets: set, col: dict, drop: set = frozenset()):
    """Per user, the first interaction with an item of `targets` and the events before it
    (items in `drop` left out) -> (histories as column lists, target items, users skipped
    because nothing came before)."""
    histories, items, skipped = [], [], 0
    for seq in inter.groupby("user_id", sort=False)["item_id"]:
        seq = seq[1].tolist()
        first = next((p for p, i in enumerate(seq) if i in targets), None)
        if first is None:
            continue
        history = [col[i] for i in seq[:first] if i not in drop]
        if not history:
            skipped += 1
            continue
        histories.append(history)
        items.append(seq[first])
    return histories, items, skipped


def windows_of(histories: list[list[int]], max_len: int) -> np.ndarray:
    """Column histories -> (U, max_len) model tokens, left-padded."""
    out = np.full((len(histories), max_len), PAD, dtype=np.int64)
    for r, h in enumerate(histories):
        tail = np.array(h[-max_len:]) + FIRST_TOKEN
        out[r, -len(tail) :] = tail
    return out


def run_seed(args, seed: int, out: Path) -> dict:
    """Split, train (epoch chosen on the validation items), re-export, test; -> the seed's report."""
    tables = load_tables(Path(args.data) / "interactions.csv", None, Path(args.data) / "items.csv")
    inter, items = tables.interactions, tables.items
    rng = np.random.default_rng(seed)
    catalogue = np.array(sorted(inter["item_id"].unique()))
    held = set(rng.choice(catalogue, size=round(args.holdout * len(catalogue)), replace=False).tolist())
    rest = np.array([i for i in catalogue if i not in held])
    val = set(rng.choice(rest, size=round(args.val_holdout * len(catalogue)), replace=False).tolist())
    gone = held | val
    split = out / "split"
    split.mkdir(parents=True, exist_ok=True)
    inter[~inter["item_id"].isin(gone)].to_csv(split / "train_interactions.csv", index=False)
    items[~items["item_id"].isin(gone)].to_csv(split / "train_items.csv", index=False)
    items.to_csv(split / "all_items.csv", index=False)

    cfg = TrainConfig(
        **{
            "model": "content_sasrec",
            "epochs": args.epochs,
            "seed": seed,
            "bucket": True,
            "eval_every": 1,
            "patience": 3,
            "threads": 1,
            **json.loads(args.config),
        }
    )
    # The model's columns and content spec, rebuilt exactly as train_and_export builds them
    # (checked against what it wrote below), so validation cases can be put in its tokens.
    train_tables = load_tables(split / "train_interactions.csv", None, split / "train_items.csv")
    model_index = with_catalogue(build_item_index(train_tables.interactions, train_tables.items), train_tables.items)
    spec, _, vectors = fit_content(
        train_tables.items,
        args.item_vectors,
        min_word_items=cfg.min_word_items,
        numeric_buckets=cfg.numeric_buckets,
        vector_components=cfg.vector_components,
    )
    # Features of every item (the validation items' rows too), as the training spec reads them.
    rows = {
        r["item_id"]: r["features"]
        for r in feature_rows(items, infer_feature_specs(train_tables.items, "item_id"), "item_id")
    }
    validator, select, val_cases = None, None, 0
    if val:
        col = {item: j for j, item in enumerate(model_index.item_ids)}
        shelf = sorted(val)
        histories, targets, _ = first_cases(inter, val, col, drop=held)
        validator = ColdShelf(
            spec,
            rows,
            shelf,
            windows_of(histories, cfg.max_len),
            np.array([shelf.index(t) for t in targets]),
            vectors=vectors,
            k=args.k,
        )
        select, val_cases = f"cold_hr@{args.k}", len(targets)
    tick = time.perf_counter()
    manifest = train_and_export(
        split / "train_interactions.csv",
        out / "trained",
        cfg,
        items=split / "train_items.csv",
        progress=False,
        item_vectors=args.item_vectors,
        validator=validator,
        select=select,
        log=lambda _: None,
    )
    train_s = time.perf_counter() - tick
    _, saved_spec, saved_ids = load_content_model(out / "trained.ckpt" / CONTENT_CHECKPOINT)
    assert saved_ids == model_index.item_ids and saved_spec == spec, "validation used other columns or content"
    history = [
        {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()} for row in manifest.training["history"]
    ]
    report = {
        "seed": seed,
        "held_out_items": len(held),
        "validation_items": len(val),
        "validation_cases": val_cases,
        "selected_by": select or f"ndcg@{args.k} (warm)",
        "best_epoch": manifest.training["best_epoch"],
        "train_seconds_contended": round(train_s),
        "config": json.loads(args.config),
        "history": history,
    }
    if args.validation_only:
        return report

    served = add_items(out / "trained", split / "all_items.csv", out / "served", item_vectors=args.item_vectors)
    index = ItemIndex.read(out / "served")
    col = {item: j for j, item in enumerate(index.item_ids)}
    held_cols = np.array(sorted(col[i] for i in held))
    assert all(index.popularity[col[i]] == 0 for i in gone), "held-out items must have no training interactions"
    histories, target_items, skipped = first_cases(inter, held, col)
    targets = np.array([col[i] for i in target_items])
    window = windows_of(histories, served.max_history)
    import onnxruntime as ort

    session = ort.InferenceSession(str(out / "served" / "model.onnx"), providers=["CPUExecutionProvider"])
    scores = np.concatenate(
        [session.run(None, {"item_seq": window[i : i + 256]})[0] for i in range(0, len(window), 256)]
    )
    n = len(index.item_ids)
    shelf = np.zeros((len(targets), n), dtype=bool)
    shelf[:, held_cols] = True
    full = np.ones((len(targets), n), dtype=bool)
    for r, h in enumerate(histories):
        full[r, h] = False
    counts = inter[~inter["item_id"].isin(held)]["item_id"].value_counts().to_dict()
    results: dict[str, dict] = {
        "content_sasrec": {
            "among_held_out": rank_metrics(ranks_among(scores, targets, shelf, rng), args.k),
            "full_catalogue": rank_metrics(ranks_among(scores, targets, full, rng), args.k),
        }
    }
    for name, year in (("genre_popularity", False), ("genre_year_popularity", True)):
        pop = genre_popularity(items, counts, year)
        base = np.tile(np.array([pop.get(i, 0.0) for i in index.item_ids]), (len(targets), 1))
        results[name] = {"among_held_out": rank_metrics(ranks_among(base, targets, shelf, rng), args.k)}
    results["random"] = {"among_held_out": random_expectation(len(held_cols), args.k)}
    # Not a baseline: the test items' true interaction counts, which no cold-start method can
    # know; a yardstick for how much of the task is popularity.
    true = inter["item_id"].value_counts().to_dict()
    oracle = np.tile(np.array([float(true.get(i, 0)) for i in index.item_ids]), (len(targets), 1))
    results["true_popularity_oracle"] = {
        "among_held_out": rank_metrics(ranks_among(oracle, targets, shelf, rng), args.k)
    }
    key = f"hr@{args.k}"
    report.update(
        {
            "catalogue": n,
            "test_users": len(targets),
            "skipped_users_without_history": skipped,
            "results": results,
            "ratio_hr_vs_genre_popularity": round(
                results["content_sasrec"]["among_held_out"][key] / results["genre_popularity"]["among_held_out"][key], 3
            ),
        }
    )
    return report


def summarise(reports: list[dict], k: int) -> dict:
    """Means over seeds of every test metric, and the target ratio of the means."""
    key = f"hr@{k}"
    mean = {}
    for name in reports[0]["results"]:
        for where, metrics in reports[0]["results"][name].items():
            for m in metrics:
                mean.setdefault(name, {}).setdefault(where, {})[m] = float(
                    np.mean([r["results"][name][where][m] for r in reports])
                )
    ratio = mean["content_sasrec"]["among_held_out"][key] / mean["genre_popularity"]["among_held_out"][key]
    return {
        "seeds": [r["seed"] for r in reports],
        "mean": mean,
        "ratio_of_means_hr_vs_genre_popularity": round(ratio, 3),
        "per_seed_ratio": [r["ratio_hr_vs_genre_popularity"] for r in reports],
        "best_epochs": [r["best_epoch"] for r in reports],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/ml-100k")
    ap.add_argument("--out", default="runs/cold_start")
    ap.add_argument("--holdout", type=float, default=0.1, help="share of items held out as test items")
    ap.add_argument(
        "--val-holdout",
        type=float,
        default=0.1,
        help="share held out as validation items (0: select on warm validation)",
    )
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated; each draws its own held-out items")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--config", default="{}", help="JSON of extra TrainConfig settings")
    ap.add_argument(
        "--item-vectors",
        default=None,
        help="precomputed item vectors (CSV item_id,v1,...,vk or JSONL), e.g. from scripts/text_vectors.py",
    )
    ap.add_argument("--validation-only", action="store_true", help="train and select only; never touch the test items")
    args = ap.parse_args()
    out = Path(args.out)
    reports = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        report = run_seed(args, seed, out / f"seed{seed}")
        (out / f"seed{seed}" / "cold_start.json").write_text(json.dumps(report, indent=2))
        reports.append(report)
        best = next(r for r in report["history"] if r["epoch"] == report["best_epoch"])
        line = f"seed {seed}: best epoch {report['best_epoch']}, validation " + ", ".join(
            f"{m} {best[m]:.4f}" for m in best if "@" in m
        )
        if "results" in report:
            r = report["results"]
            line += (
                f" | test HR@{args.k} {r['content_sasrec']['among_held_out'][f'hr@{args.k}']:.4f} vs genre popularity "
                f"{r['genre_popularity']['among_held_out'][f'hr@{args.k}']:.4f} ({report['ratio_hr_vs_genre_popularity']:.2f}x)"
            )
        print(line, flush=True)
    if args.validation_only:
        return
    summary = summarise(reports, args.k)
    (out / "cold_start.json").write_text(
        json.dumps({"args": vars(args), "summary": summary, "seeds": reports}, indent=2)
    )
    key = f"hr@{args.k}"
    print(f"mean over seeds {summary['seeds']}:")
    print(f"{'':24s} {'HR@10 held-out':>15s} {'NDCG@10 held-out':>17s} {'HR@10 full':>11s}")
    for name, r in summary["mean"].items():
        a, f = r["among_held_out"], r.get("full_catalogue")
        print(f"{name:24s} {a[key]:15.4f} {a[f'ndcg@{args.k}']:17.4f} {f[key] if f else float('nan'):11.4f}")
    print(
        f"content_sasrec / genre popularity HR@{args.k} (ratio of means): {summary['ratio_of_means_hr_vs_genre_popularity']:.2f}x"
    )


if __name__ == "__main__":
    main()
