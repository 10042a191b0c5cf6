"""One training run on the leave-last-out split, scored on the held-out items (no export, no
servers): for trying settings quickly. The ranking is the one `recsys evaluate` and the
inference server use (full catalogue, seen items excluded, unknown targets count as misses).

    python -m experiments.experiment '{"model": "gru4rec", "lr": 0.001}' [--data data/ml-100k]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from recsys.schema import FIRST_TOKEN
from trainer.data.encoding import build_item_index, encode_histories
from trainer.data.tables import load_tables
from trainer.families.next_item import TrainConfig, fit, score_histories
from trainer.metrics import rank_of_targets, ranking_metrics


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="?", default="{}", help="JSON object of TrainConfig fields")
    parser.add_argument("--data", default="data/ml-100k")
    parser.add_argument("--split", default="runs/quality", help="directory for train.csv / test.csv")
    args = parser.parse_args()
    split = Path(args.split)
    if not (split / "train.csv").exists():
        recsys = [sys.executable, "-m", "recsys.cli"]
        if not (Path(args.data) / "interactions.csv").exists():
            subprocess.run([*recsys, "data", "download", "movielens-100k", "--to", args.data], check=True)
        subprocess.run(
            [*recsys, "data", "split", "--interactions", f"{args.data}/interactions.csv", "--out", str(split)],
            check=True,
        )
    cfg = TrainConfig(**json.loads(args.overrides))
    train = load_tables(split / "train.csv").interactions
    test = load_tables(split / "test.csv").interactions
    index = build_item_index(train, None)
    users, sequences = encode_histories(train, index)
    started = time.perf_counter()
    result = fit(cfg, sequences, len(index.item_ids), progress=False)
    seconds = time.perf_counter() - started

    history = dict(zip(users, sequences))
    token = {item: i + FIRST_TOKEN for i, item in enumerate(index.item_ids)}
    rows = [(history[u], token.get(i)) for u, i in zip(test["user_id"], test["item_id"]) if u in history]
    scores = score_histories(result.model, [h for h, _ in rows], cfg.max_len)
    excluded = np.zeros_like(scores, dtype=bool)
    for r, (h, _) in enumerate(rows):
        excluded[r, h - FIRST_TOKEN] = True
    targets = np.array([(t or FIRST_TOKEN) - FIRST_TOKEN for _, t in rows])
    ranks = rank_of_targets(scores, targets, excluded)
    ranks[[t is None for _, t in rows]] = np.inf
    print(
        json.dumps(
            {
                "config": json.loads(args.overrides),
                "fit_seconds": round(seconds, 1),
                "best_epoch": result.best_epoch,
                "epochs_run": len(result.history),
                "valid": {k: round(v, 4) for k, v in result.best_metrics.items() if "@" in k},
                "test": {k: round(v, 4) for k, v in ranking_metrics(ranks, 10).items()},
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
