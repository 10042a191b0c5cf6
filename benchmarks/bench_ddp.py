"""1 process against N DDP processes: wall time, training throughput and validation NDCG@10.

    python -m benchmarks.bench_ddp --data data/ml-100k --epochs 6 --runs 1x1,1x2,2x1

Each run `PxT` trains SASRec (TrainConfig defaults, the given --epochs, validation every 3
epochs, no early stop) on P processes of T torch threads each, through torchrun as `recsys
train --nproc P` does, and prints one JSON line per run. It reads interactions.csv with the
csv module and calls `trainer.families.next_item.fit` directly (no export), so it needs only torch and
numpy, and runs on hosts without the data stack.

    python -m benchmarks.bench_ddp --families sasrec,gru4rec,caser,deepfm,two_tower \
        --data DIR --epochs 3 --seeds 0,1,2 --nprocs 1,2

The families mode runs the product command itself, `recsys train --model M --nproc P --seed S
--epochs E` (users.csv and items.csv of DIR when present), once per family, process count and
seed, and prints one JSON line per run (wall time with the export, the validation metrics of the
artifact's report) and then a summary line per family and process count: the headline
validation metric's mean and spread (max - min) over the seeds, and the mean wall time.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

from recsys.schema import FIRST_TOKEN

ROOT = Path(__file__).resolve().parents[1]  # on the workers' PYTHONPATH: they run this module


def read_sequences(interactions: Path):
    """Per user, item tokens oldest first; items numbered by popularity (ties by id) as the pipeline does."""
    rows = defaultdict(list)
    with open(interactions, newline="") as f:
        for row in csv.DictReader(f):
            rows[row["user_id"]].append((int(float(row["timestamp"])), row["item_id"]))
    counts = Counter(item for events in rows.values() for _, item in events)
    order = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    token = {item: i + FIRST_TOKEN for i, (item, _) in enumerate(order)}
    return [[token[item] for _, item in sorted(events, key=lambda e: e[0])] for events in rows.values()], len(order)


def worker(args) -> None:
    import numpy as np

    from trainer import distributed
    from trainer.families.next_item import TrainConfig, fit

    dist = distributed.init_from_env()
    sequences, num_items = read_sequences(Path(args.data) / "interactions.csv")
    cfg = TrainConfig(epochs=args.epochs, eval_every=3, patience=100, seed=args.seed, threads=args.threads)
    start = time.perf_counter()
    result = fit(cfg, [np.array(s, dtype=np.int64) for s in sequences], num_items, progress=False)
    seconds = time.perf_counter() - start
    if dist.is_main:
        rates = [row["events_per_s"] for row in result.history]
        Path(args.result).write_text(
            json.dumps(
                {
                    "processes": dist.world_size,
                    "threads": args.threads,
                    "epochs": len(result.history),
                    "train_seconds": round(seconds, 1),
                    "events_per_s_median": sorted(rates)[len(rates) // 2],
                    "ndcg@10": round(result.best_metrics["ndcg@10"], 4),
                    "hr@10": round(result.best_metrics["hr@10"], 4),
                    "best_epoch": result.best_epoch,
                }
            )
        )
    distributed.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/ml-100k")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", default="1x1,2x1", help="Comma-separated PROCESSESxTHREADS.")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--families", help="Comma-separated models: run `recsys train` for each instead.")
    parser.add_argument("--seeds", default="0,1,2", help="Families mode: comma-separated seeds.")
    parser.add_argument("--nprocs", default="1,2", help="Families mode: comma-separated process counts.")
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.families:
        families(args)
        return
    for run in args.runs.split(","):
        procs, threads = (int(x) for x in run.split("x"))
        result = Path(f"/tmp/bench_ddp_{os.getpid()}_{run}.json")
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={procs}",
            "-m",
            "benchmarks.bench_ddp",
            "--worker",
            "--data",
            args.data,
            "--epochs",
            str(args.epochs),
            "--seed",
            str(args.seed),
            "--threads",
            str(threads),
            "--result",
            str(result),
        ]
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(threads),
            "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}",
        }
        load = os.getloadavg()[0]
        tick = time.perf_counter()
        subprocess.run(cmd, check=True, env=env)
        out = json.loads(result.read_text())
        result.unlink()
        out.update(wall_seconds=round(time.perf_counter() - tick, 1), load_before=round(load, 1), cpus=os.cpu_count())
        print(json.dumps(out), flush=True)


# The validation metric each family's report leads with, first found wins.
HEADLINE = ("valid_ndcg@10", "valid_auc", "valid_recall@10", "valid_hr@10")


def train_once(data: Path, model: str, nproc: int, seed: int, epochs: int, out: Path) -> dict:
    """One `recsys train` run: wall seconds (training and export) and its validation metrics."""
    cmd = [
        sys.executable,
        "-m",
        "recsys.cli",
        "train",
        "--model",
        model,
        "--interactions",
        str(data / "interactions.csv"),
    ]
    for table in ("users", "items"):
        if (data / f"{table}.csv").is_file():
            cmd += [f"--{table}", str(data / f"{table}.csv")]
    cmd += ["--out", str(out), "--epochs", str(epochs), "--seed", str(seed), "--nproc", str(nproc), "--quiet"]
    load = os.getloadavg()[0]
    tick = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - tick
    metrics = json.loads((out / "report.json").read_text())["metrics"]
    valid = {k: round(v, 4) for k, v in metrics.items() if k.startswith("valid_")}
    return {
        "model": model,
        "nproc": nproc,
        "seed": seed,
        "wall_seconds": round(wall, 1),
        "load_before": round(load, 1),
        **valid,
    }


def families(args) -> None:
    import shutil
    import statistics
    import tempfile

    data = Path(args.data)
    seeds = [int(s) for s in args.seeds.split(",")]
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench_ddp_") as tmp:
        for model in args.families.split(","):
            for nproc in (int(p) for p in args.nprocs.split(",")):
                for seed in seeds:
                    out = Path(tmp) / f"{model}-{nproc}-{seed}"
                    runs.append(train_once(data, model, nproc, seed, args.epochs, out))
                    shutil.rmtree(out, ignore_errors=True)
                    print(json.dumps(runs[-1]), flush=True)
    for model in args.families.split(","):
        for nproc in (int(p) for p in args.nprocs.split(",")):
            mine = [r for r in runs if r["model"] == model and r["nproc"] == nproc]
            metric = next(m for m in HEADLINE if m in mine[0])
            values = [r[metric] for r in mine]
            summary = {
                "model": model,
                "nproc": nproc,
                "metric": metric,
                "mean": round(statistics.fmean(values), 4),
                "spread": round(max(values) - min(values), 4),
                "wall_seconds_mean": round(statistics.fmean(r["wall_seconds"] for r in mine), 1),
                "seeds": len(mine),
            }
            print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
