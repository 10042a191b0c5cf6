"""Feature-based rankers and the rating model on ML-100K, mean over seeds.

Label = rating >= 4 for the rankers (DeepFM, DCN-v2, Conv1D CTR), the rating itself for the
rating model; user features (age, gender, occupation; zip_code is free text and not read),
item features (year, genres) and each event's 50 preceding items; a random 8:1:1 split of
events by seed. Each model keeps its best epoch by validation AUC (or RMSE) and scores the
test split once. Settings per model are in SETTINGS below; they were chosen on the validation
split of seed 0 only. Writes <out>/results.json and prints a table.

    python -m experiments.ranking_quality --data data/ml-100k --out runs/ranking_quality --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict
from pathlib import Path

from trainer.data.tables import load_tables
from trainer.families.ranker import RankConfig, train_ranker

# RecBole 1.2.1 DeepFM, same data, features, label and split.
RECBOLE_DEEPFM = {"test_auc": 0.7861, "test_logloss": 0.5718}
# history_len 50 = the sequential models' default: max_history is part of the hashed schema, so
# equal lengths let a ranker share a feature service with SASRec (200 scored ~0.005 higher with
# the earlier settings, 0.0017 lower on seed-0 validation AUC with user_id + ordinal).
COMMON = {"history_len": 50, "epochs": 40, "patience": 3}
SETTINGS: dict[str, dict] = {
    # user_id: the user id as one more field (users unseen in training share an OOV vector): seed-0
    # validation AUC 0.7608 -> 0.7891; ordinal: trained on every rating level (cumulative logits):
    # 0.7891 -> 0.7911; dcn 0.7641 -> 0.7893, conv_ctr 0.7652 -> 0.7853 with both. deepfm weight_decay
    # 1e-4 (Adam L2): 0.7911 -> 0.7976 (tried there too: dim 32 0.7932, dim 8 0.7836, weight_decay 3e-4
    # 0.7849, dim 32 + 1e-4 0.7895, history_len 200 0.7894, cosine schedule 0.7895, 5e-5 0.7978); then
    # ema 0.99 (validate and keep a moving average of the weights) 0.7976 -> 0.8007 (ema 0.995 0.8006,
    # patience 6 without ema 0.7999), still rising at the 40-epoch cap, hence 80 epochs.
    "deepfm": dict(
        model="deepfm",
        dropout=0.5,
        history_attention=True,
        lr=3e-3,
        batch_size=2048,
        user_id=True,
        ordinal=True,
        weight_decay=1e-4,
        ema=0.99,
        **{**COMMON, "epochs": 80},
    ),
    "dcn": dict(model="dcn", dropout=0.5, lr=3e-3, batch_size=2048, user_id=True, ordinal=True, **COMMON),
    "conv_ctr": dict(model="conv_ctr", lr=3e-3, batch_size=2048, user_id=True, ordinal=True, **COMMON),
    "rating": dict(model="rating", lr=1e-3, batch_size=1024, weight_decay=1e-5, **COMMON),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/ml-100k", help="directory with interactions/users/items.csv")
    parser.add_argument("--out", default="runs/ranking_quality")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--models", default=",".join(SETTINGS))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument(
        "--set", default="{}", help='JSON of RankConfig settings over every model\'s, e.g. {"user_id": false}'
    )
    args = parser.parse_args()
    data = Path(args.data)
    tables = load_tables(data / "interactions.csv", data / "users.csv", data / "items.csv")
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict[str, dict] = {}
    for name in args.models.split(","):
        runs = []
        for seed in seeds:
            cfg = RankConfig(**{**SETTINGS[name], **json.loads(args.set)}, seed=seed, threads=args.threads)
            start = time.perf_counter()
            run = train_ranker(cfg, tables=tables, progress=False, log=lambda *_: None)
            row = {
                "seed": seed,
                "best_epoch": run.fit.best_epoch,
                "seconds": round(time.perf_counter() - start, 1),
                **run.fit.best_metrics,
                **run.test_metrics,
            }
            print(name, json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
            runs.append(row)
        keys = [k for k in runs[0] if k.startswith(("test_", "valid_"))]
        summary = {
            k: {
                "mean": statistics.mean(r[k] for r in runs),
                "sd": statistics.stdev(r[k] for r in runs) if len(runs) > 1 else 0.0,
            }
            for k in keys
        }
        results[name] = {
            "config": asdict(RankConfig(**{**SETTINGS[name], **json.loads(args.set)})),
            "runs": runs,
            "summary": summary,
        }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(
        json.dumps({"seeds": seeds, "recbole_deepfm": RECBOLE_DEEPFM, "results": results}, indent=2)
    )
    print(f"\nML-100K, random 8:1:1 split, mean ± sd over seeds {seeds} (test split)")
    for name, r in results.items():
        s = r["summary"]
        cols = ("test_rmse", "test_mae") if name == "rating" else ("test_auc", "test_logloss", "test_accuracy")
        print(f"{name:9s} " + "  ".join(f"{c[5:]} {s[c]['mean']:.4f} ± {s[c]['sd']:.4f}" for c in cols))
    print(f"RecBole DeepFM: auc {RECBOLE_DEEPFM['test_auc']}, logloss {RECBOLE_DEEPFM['test_logloss']}")


if __name__ == "__main__":
    main()
