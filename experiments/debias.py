"""Plain vs popularity-debiased SASRec on ML-100K: accuracy and long-tail exposure.

For each variant and seed: train on the leave-last-out split (everything but each user's
last interaction; selection on the last training event, as `recsys train` does), export,
and run `recsys evaluate` (full ranking, seen items excluded) on the held-out items. Prints
one row per run and the mean per variant. An artifact directory
that already exists is evaluated, not retrained (delete it to retrain).

    nice -n 10 python -m experiments.debias --out runs/debias --seeds 0 \\
        --variants plain,logit_adjust_0.5,pop_neg_no_logq [--epochs 15] [--threads 1]

Several invocations with different --variants may run at once into one --out directory;
each writes results-<variants>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from trainer.evaluate import evaluate_artifact
from trainer.families.next_item import TrainConfig
from trainer.pipeline import train_and_export

# Each variant: TrainConfig overrides on top of the SASRec defaults.
VARIANTS = {
    "plain": {},
    "logit_adjust_0.5": {"popularity_debias": 0.5},
    "logit_adjust_1.0": {"popularity_debias": 1.0},
    "pop_neg_logq": {"loss": "sampled_softmax", "negative_sampling": "popularity", "negatives": 200},
    "pop_neg_no_logq": {
        "loss": "sampled_softmax",
        "negative_sampling": "popularity",
        "negatives": 200,
        "logq_correction": False,
    },
}
SHOWN = ("ndcg@10", "hr@10", "coverage@10", "gini@10", "tail_share@10", "tail_recall@10", "mean_popularity@10")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/ml-100k")
    parser.add_argument("--split", default="runs/quality", help="directory for train.csv / test.csv")
    parser.add_argument("--out", default="runs/debias")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--variants", default="plain,logit_adjust_0.5,pop_neg_no_logq")
    parser.add_argument("--epochs", type=int, help="cap on epochs (default: TrainConfig's, early stopping decides)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per training (0 = torch's default)")
    parser.add_argument(
        "--mask-seen",
        choices=("false", "default"),
        default="false",
        help="TrainConfig.mask_seen: false (as the README table was measured, before the option "
        "existed) or the default (on with the ce loss)",
    )
    args = parser.parse_args()
    split, out = Path(args.split), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not (split / "train.csv").exists():
        recsys = [sys.executable, "-m", "recsys.cli"]
        if not (Path(args.data) / "interactions.csv").exists():
            subprocess.run([*recsys, "data", "download", "movielens-100k", "--to", args.data], check=True)
        subprocess.run(
            [*recsys, "data", "split", "--interactions", f"{args.data}/interactions.csv", "--out", str(split)],
            check=True,
        )
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    runs = []
    results_name = f"results-{'+'.join(names)}.json"
    for name in names:
        for seed in [int(s) for s in args.seeds.split(",")]:
            artifact = out / f"{name}-seed{seed}"
            if not (artifact / "manifest.json").exists():
                budget = {"epochs": args.epochs} if args.epochs else {}
                mask = {"mask_seen": False} if args.mask_seen == "false" else {}
                cfg = TrainConfig(seed=seed, threads=args.threads, **budget, **mask, **VARIANTS[name])
                train_and_export(split / "train.csv", artifact, cfg, progress=False)
            manifest = json.loads((artifact / "manifest.json").read_text())
            result = evaluate_artifact(artifact, split / "test.csv")
            row = {
                "variant": name,
                "seed": seed,
                "train_seconds": manifest["training"].get("seconds"),
                "best_epoch": manifest["training"].get("best_epoch"),
                "valid_ndcg@10": manifest["metrics"].get("valid_ndcg@10"),
                **{key: result[key] for key in SHOWN},
                "tail_cases": result["tail_cases"],
            }
            runs.append(row)
            print(json.dumps(row), flush=True)
            (out / results_name).write_text(json.dumps({"runs": runs, "variants": VARIANTS}, indent=2))
    summary = {}
    for name in names:
        rows = [r for r in runs if r["variant"] == name]
        summary[name] = {
            key: {
                "mean": statistics.mean(r[key] for r in rows),
                "sd": statistics.stdev(r[key] for r in rows) if len(rows) > 1 else 0.0,
            }
            for key in SHOWN
        }
    (out / results_name).write_text(json.dumps({"runs": runs, "summary": summary, "variants": VARIANTS}, indent=2))
    print(f"{'variant':<20}" + "".join(f"{key:>20}" for key in SHOWN))
    for name, stats in summary.items():
        print(f"{name:<20}" + "".join(f"{stats[k]['mean']:>13.4f} ±{stats[k]['sd']:.3f}" for k in SHOWN))
    return 0


if __name__ == "__main__":
    sys.exit(main())
