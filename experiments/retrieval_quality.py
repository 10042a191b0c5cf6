"""Served quality of the two-tower retrieval model on ML-100K, leave-last-out, mean over seeds.

The protocol of experiments/quality.py: train on everything but each user's last interaction,
export, serve (feature service + inference server on loopback), Recommend(k=10,
exclude_seen=true) for every test user over gRPC, NDCG@10 / HR@10 / MRR@10 against the
held-out item. As a retrieval stage it is also scored by recall@200: the share of test users
whose held-out item is among the 200 items it proposes (Recommend k=200, seen items excluded,
which is what two-stage serving hands the ranker with --candidates 200).

    python -m experiments.retrieval_quality --data data/ml-100k --out runs/retrieval_quality --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from experiments.quality import served_metrics


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/ml-100k")
    parser.add_argument("--out", default="runs/retrieval_quality")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--config", help="RetrievalConfig file (TOML/JSON) passed to recsys train")
    parser.add_argument("--candidates", type=int, default=200, help="N of recall@N")
    args = parser.parse_args()
    out = Path(args.out)
    recsys = [sys.executable, "-m", "recsys.cli"]
    subprocess.run(
        [*recsys, "data", "split", "--interactions", f"{args.data}/interactions.csv", "--out", str(out)], check=True
    )
    test = pd.read_csv(out / "test.csv", dtype={"user_id": str, "item_id": str})
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        artifact = out / f"two_tower-seed{seed}"
        started = time.perf_counter()
        cmd = [
            *recsys,
            "train",
            "--interactions",
            str(out / "train.csv"),
            "--items",
            f"{args.data}/items.csv",
            "--users",
            f"{args.data}/users.csv",
            "--model",
            "two_tower",
            "--out",
            str(artifact),
            "--seed",
            str(seed),
            "--quiet",
        ]
        if args.config:
            cmd += ["--config", args.config]
        subprocess.run(cmd, check=True)
        train_s = time.perf_counter() - started
        top10 = served_metrics(artifact, test, 10)
        wide = served_metrics(artifact, test, args.candidates)
        manifest = json.loads((artifact / "manifest.json").read_text())
        row = {
            "seed": seed,
            "train_seconds": round(train_s, 1),
            "best_epoch": manifest["training"]["best_epoch"],
            **{f"served_{k}": v for k, v in top10.items()},
            f"served_recall@{args.candidates}": wide[f"hr@{args.candidates}"],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    keys = ["served_ndcg@10", "served_hr@10", "served_mrr@10", f"served_recall@{args.candidates}"]
    summary = {
        "model": "two_tower",
        "seeds": [r["seed"] for r in rows],
        **{f"mean_{k}": statistics.mean(r[k] for r in rows) for k in keys},
        **{f"std_{k}": statistics.stdev(r[k] for r in rows) if len(rows) > 1 else 0.0 for k in keys},
        "mean_train_seconds": statistics.mean(r["train_seconds"] for r in rows),
        "runs": rows,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
