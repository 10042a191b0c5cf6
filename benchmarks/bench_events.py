"""Does reading event kinds help? Event-aware vs event-blind SASRec on synthetic view/purchase
data where the kinds reveal the rule, predicting each user's next purchase.

    python -m benchmarks.bench_events [--seeds 0,1,2] [--users 1000] [--items 300] [--epochs 60]
        [--loss ce|sampled_softmax [--negatives 30] [--negative-sampling popularity|uniform]] [--out .bench/events.json]

Data (`events_table`): every user browses (views) and now and then buys (purchase, probability
`buy` per event). Views follow their own chains: with probability `follow` the next view is the
current view's fixed successor, else a popular item at random. Purchases follow a chain of
their own: a user's next purchase is, with probability `follow`, the fixed purchase-successor
of their previous purchase (bought a camera -> buys its lens), else an item at random. So the
next purchase is decided by the last *purchase*, which only the kinds tell apart from the views
between them.

Protocol, per seed (data and training seed): the interactions are split with
leave_last_out(target_events=("purchase",)): each user's last purchase is the test, what
follows it dropped; training selects its epoch on the last purchase before that (NDCG@10,
trainer/families/next_item.py). Both models train on the same split with the same settings
(target_events = purchase: every event read, only purchases predicted); the only difference
is `read_events`. Test: full ranking of the held-out purchase against every item the user has
not seen, NDCG@10 and HR@10, mean and standard deviation over the seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.schema import FIRST_TOKEN
from trainer.data.encoding import build_item_index, encode_events, encode_histories, event_vocabulary
from trainer.data.split import leave_last_out
from trainer.families.next_item import TrainConfig, fit, validate


def events_table(
    users: int, items: int, seed: int, buy: float = 0.25, follow: float = 0.8, min_len: int = 8, max_len: int = 20
) -> pd.DataFrame:
    """user_id, item_id, timestamp, event (view | purchase), one row per event, in time order."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, items + 1) ** 0.8
    popularity /= popularity.sum()
    view_next = rng.permutation(items)  # each item's fixed successor among views
    buy_next = rng.permutation(items)  # ... and among purchases
    lengths = rng.integers(min_len, max_len + 1, users)
    total = int(lengths.sum())
    kinds = rng.random(total) < buy  # True: purchase
    fresh = rng.choice(items, total, p=popularity)
    follows = rng.random(total) < follow
    item = np.empty(total, dtype=np.int64)
    at = 0
    for n in lengths.tolist():  # per user; the chains make each event depend on an earlier one
        last_view = last_buy = -1
        for t in range(at, at + n):
            if kinds[t]:
                item[t] = buy_next[last_buy] if last_buy >= 0 and follows[t] else fresh[t]
                last_buy = item[t]
            else:
                item[t] = view_next[last_view] if last_view >= 0 and follows[t] else fresh[t]
                last_view = item[t]
        at += n
    return pd.DataFrame(
        {
            "user_id": np.repeat([f"u{u}" for u in range(users)], lengths),
            "item_id": [f"i{i}" for i in item.tolist()],
            "timestamp": np.concatenate([np.arange(n) for n in lengths.tolist()]),
            "event": np.where(kinds, "purchase", "view"),
        }
    ).sort_values("timestamp", kind="stable", ignore_index=True)


def run(seed: int, users: int, items: int, cfg: TrainConfig) -> dict:
    """Both models on one seed's data and split: {"aware": metrics, "blind": metrics}."""
    train, test = leave_last_out(events_table(users, items, seed), ("purchase",))
    index = build_item_index(train, None)
    kinds = event_vocabulary(train)
    names, sequences = encode_histories(train, index)
    events = encode_events(train, kinds)
    row = {name: r for r, name in enumerate(names)}
    token = {item: i + FIRST_TOKEN for i, item in enumerate(index.item_ids)}
    held = test[test["item_id"].isin(token)]  # an item never seen in training cannot be ranked
    order = [row[u] for u in held["user_id"]]
    targets = np.array([token[i] for i in held["item_id"]], dtype=np.int64)
    out = {"test_users": len(held), "train_events": len(train)}
    for name, read in (("aware", True), ("blind", False)):
        own = dataclasses.replace(cfg, seed=seed, read_events=read)
        start = time.perf_counter()
        result = fit(own, sequences, len(index.item_ids), progress=False, events=events, event_kinds=kinds)
        metrics = validate(
            result.model,
            [sequences[r] for r in order],
            targets,
            len(index.item_ids),
            own,
            events=[events[r] for r in order] if read else None,
        )
        out[name] = {
            "ndcg@10": metrics["ndcg@10"],
            "hr@10": metrics["hr@10"],
            "valid_ndcg@10": result.best_metrics["ndcg@10"],
            "best_epoch": result.best_epoch,
            "seconds": round(time.perf_counter() - start, 1),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--loss", default="ce", help="ce (full softmax) or sampled_softmax")
    parser.add_argument("--negatives", type=int, default=30, help="sampled_softmax: negatives per step")
    parser.add_argument("--negative-sampling", default="popularity", choices=("uniform", "popularity"))
    parser.add_argument("--out", default=".bench/events.json")
    args = parser.parse_args()
    cfg = TrainConfig(
        model="sasrec",
        loss=args.loss,
        negatives=args.negatives,
        negative_sampling=args.negative_sampling,
        max_len=20,
        hidden=32,
        epochs=args.epochs,
        eval_every=3,
        patience=3,
        batch_size=128,
        target_events=("purchase",),
    )
    load = os.getloadavg()[0]
    runs = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        runs[seed] = run(seed, args.users, args.items, cfg)
        print(json.dumps({"seed": seed, **runs[seed]}), flush=True)
    summary = {}
    for name in ("aware", "blind"):
        for metric in ("ndcg@10", "hr@10"):
            values = np.array([r[name][metric] for r in runs.values()])
            summary[f"{name}_{metric}"] = {"mean": round(float(values.mean()), 4), "std": round(float(values.std()), 4)}
    report = {
        "summary": summary,
        "runs": runs,
        "settings": {
            "users": args.users,
            "items": args.items,
            "epochs": args.epochs,
            "loss": args.loss,
            **({"negatives": args.negatives, "negative_sampling": args.negative_sampling} if args.loss != "ce" else {}),
        },
        "load_1min": {"before": round(load, 2), "after": round(os.getloadavg()[0], 2)},
    }
    print(json.dumps(report["summary"], indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
