"""Quality vs privacy on ML-100K (`make dp-table`): NDCG@10 on the leave-last-out test for
SASRec trained with user-level DP-SGD (trainer/families/private.py) at several ε.

Each row: train on train.csv (each user's last event held out as test) with
`recsys train --private --target-epsilon E` settings, export, then `recsys evaluate`
(full ranking, seen items excluded) of the artifact on test.csv. The ε reported is what the
accountant says the run spent (from the manifest), at δ = 1 / (10 · users) unless `--delta`.
A popularity row (training counts, seen items excluded) is the floor any model should beat.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from recsys.artifact import read_manifest
from trainer.data.split import write_leave_last_out
from trainer.evaluate import evaluate_artifact
from trainer.families.next_item import TrainConfig
from trainer.families.private import PrivacyConfig
from trainer.pipeline import train_and_export


def popularity_ndcg(train_csv: Path, test_csv: Path, k: int) -> dict[str, float]:
    """NDCG@k / HR@k of ranking by training popularity, each user's seen items excluded."""
    import pandas as pd

    train, test = pd.read_csv(train_csv, dtype=str), pd.read_csv(test_csv, dtype=str)
    order = train["item_id"].value_counts().index.tolist()
    seen = train.groupby("user_id")["item_id"].apply(set).to_dict()
    ndcg = hits = 0.0
    for user, item in zip(test["user_id"], test["item_id"], strict=True):
        ranked = [i for i in order if i not in seen.get(user, set())][:k]
        if item in ranked:
            hits += 1
            ndcg += 1 / np.log2(ranked.index(item) + 2)
    return {f"ndcg@{k}": ndcg / len(test), f"hr@{k}": hits / len(test)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/ml-100k")
    ap.add_argument("--out", default="runs/dp_table")
    ap.add_argument("--epsilons", default="1,4,16")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--expected-batch", type=int, default=128)
    ap.add_argument("--max-grad-norm", type=float, default=1.0)
    ap.add_argument("--delta", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-len", type=int, default=50, help="history length the model reads")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--k", type=int, default=10)
    args = ap.parse_args()
    out = Path(args.out)
    split = out / "split"
    if not (split / "test.csv").exists():
        write_leave_last_out(Path(args.data) / "interactions.csv", split)
    rows = [
        {"model": "popularity", "epsilon": None, **popularity_ndcg(split / "train.csv", split / "test.csv", args.k)}
    ]
    for eps in [float(e) for e in args.epsilons.split(",") if e.strip()]:
        cfg = TrainConfig(model="sasrec", epochs=args.epochs, seed=args.seed, max_len=args.max_len, lr=args.lr)
        privacy = PrivacyConfig(
            target_epsilon=eps, delta=args.delta, max_grad_norm=args.max_grad_norm, expected_batch=args.expected_batch
        )
        artifact = out / f"eps_{eps:g}"
        tick = time.perf_counter()
        train_and_export(split / "train.csv", artifact, cfg, private=privacy, progress=False, log=lambda _: None)
        seconds = time.perf_counter() - tick
        spent = read_manifest(artifact).privacy
        metrics = evaluate_artifact(artifact, split / "test.csv", k=args.k)
        rows.append(
            {
                "model": "sasrec (DP-SGD)",
                "target_epsilon": eps,
                "epsilon": spent["epsilon"],
                "delta": spent["delta"],
                "noise_multiplier": spent["noise_multiplier"],
                "steps": spent["steps"],
                f"ndcg@{args.k}": metrics[f"ndcg@{args.k}"],
                f"hr@{args.k}": metrics[f"hr@{args.k}"],
                "seconds_contended": round(seconds),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
        (out / "dp_table.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    print(f"| model | ε spent (δ) | noise σ | steps | NDCG@{args.k} | HR@{args.k} |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        eps = "—" if r["epsilon"] is None else f"{r['epsilon']:.2f} ({r['delta']:.1e})"
        print(
            f"| {r['model']} | {eps} | {r.get('noise_multiplier', '—')} | {r.get('steps', '—')} | "
            f"{r[f'ndcg@{args.k}']:.4f} | {r[f'hr@{args.k}']:.4f} |"
        )


if __name__ == "__main__":
    main()
