"""Served quality on ML-100K, leave-last-out, mean over seeds (`make quality`; `--model` for others).

For each seed: train the model (SASRec by default) on everything but each user's last interaction, export, serve it
(feature service + inference server on loopback), call Recommend(k=10, exclude_seen=true) for
every test user over gRPC and score NDCG@10 / HR@10 / MRR@10 against the held-out item; then
run `recsys evaluate` on the same artifact and split and report the difference.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pandas as pd

from feature_service.server import create_feature_server
from inference_server.server import create_inference_server
from recsys.v1 import inference_pb2, inference_pb2_grpc


def served_metrics(artifact: Path, test: pd.DataFrame, k: int) -> dict:
    fserver, fport, _, fcore = create_feature_server(artifact, "memory://")
    iserver, iport, _, rec = create_inference_server(artifact, f"localhost:{fport}")
    hits = ndcg = mrr = 0.0
    fallback = 0
    latencies = []
    try:
        with grpc.insecure_channel(f"localhost:{iport}") as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            for user, item in zip(test["user_id"], test["item_id"]):
                t = time.perf_counter()
                reply = stub.Recommend(inference_pb2.RecommendRequest(user_id=user, k=k, exclude_seen=True), timeout=10)
                latencies.append(time.perf_counter() - t)
                fallback += reply.source != inference_pb2.SOURCE_MODEL
                ids = [i.item_id for i in reply.items]
                if item in ids:
                    rank = ids.index(item)
                    hits += 1
                    ndcg += 1 / math.log2(rank + 2)
                    mrr += 1 / (rank + 1)
    finally:
        iserver.stop(None)
        fserver.stop(None)
        rec.features.close()
        fcore.close()
    n = len(test)
    latencies.sort()
    return {
        "users": n,
        f"hr@{k}": hits / n,
        f"ndcg@{k}": ndcg / n,
        f"mrr@{k}": mrr / n,
        "fallback_users": fallback,
        "p50_ms": 1000 * latencies[n // 2],
        "p99_ms": 1000 * latencies[min(n - 1, int(n * 0.99))],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="data/ml-100k")
    parser.add_argument("--out", default="runs/quality")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--config", help="training config file passed to recsys train")
    parser.add_argument("--model", default="sasrec", help="next-item model to train (sasrec, gru4rec, caser)")
    args = parser.parse_args()
    out = Path(args.out)
    recsys = [sys.executable, "-m", "recsys.cli"]
    if not (Path(args.data) / "interactions.csv").exists():
        subprocess.run([*recsys, "data", "download", "movielens-100k", "--to", args.data], check=True)
    subprocess.run(
        [*recsys, "data", "split", "--interactions", f"{args.data}/interactions.csv", "--out", str(out)], check=True
    )
    test = pd.read_csv(out / "test.csv", dtype={"user_id": str, "item_id": str})
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        artifact = out / f"{args.model}-seed{seed}"
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
            args.model,
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
        served = served_metrics(artifact, test, args.k)
        evaluated = (
            subprocess.run(
                [
                    *recsys,
                    "evaluate",
                    "--artifact",
                    str(artifact),
                    "--test",
                    str(out / "test.csv"),
                    "--k",
                    str(args.k),
                    "--json",
                ],
                check=True,
                capture_output=True,
                text=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        evaluated = json.loads(evaluated)
        manifest = json.loads((artifact / "manifest.json").read_text())
        row = {
            "seed": seed,
            "train_seconds": round(train_s, 1),
            "best_epoch": manifest["training"]["best_epoch"],
            **{f"served_{key}": value for key, value in served.items()},
            f"evaluate_ndcg@{args.k}": evaluated[f"ndcg@{args.k}"],
            f"evaluate_hr@{args.k}": evaluated[f"hr@{args.k}"],
        }
        row["served_minus_evaluate_ndcg"] = row[f"served_ndcg@{args.k}"] - row[f"evaluate_ndcg@{args.k}"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    key = f"served_ndcg@{args.k}"
    values = [r[key] for r in rows]
    summary = {
        "model": args.model,
        "seeds": [r["seed"] for r in rows],
        f"mean_{key}": statistics.mean(values),
        f"std_{key}": statistics.stdev(values) if len(values) > 1 else 0.0,
        f"mean_served_hr@{args.k}": statistics.mean(r[f"served_hr@{args.k}"] for r in rows),
        f"mean_served_mrr@{args.k}": statistics.mean(r[f"served_mrr@{args.k}"] for r in rows),
        f"mean_evaluate_ndcg@{args.k}": statistics.mean(r[f"evaluate_ndcg@{args.k}"] for r in rows),
        "max_abs_served_minus_evaluate": max(abs(r["served_minus_evaluate_ndcg"]) for r in rows),
        "mean_train_seconds": statistics.mean(r["train_seconds"] for r in rows),
        "runs": rows,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
