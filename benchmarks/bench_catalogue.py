"""Training cost and quality of next-item training as the catalogue grows.

    python -m benchmarks.bench_catalogue speed   --items 1682,50000,200000 --steps 60 --out F.jsonl
    python -m benchmarks.bench_catalogue quality --data ml-100k --seeds 0,1,2 --out F.jsonl
    python -m benchmarks.bench_catalogue quality --data synth --items 50000 --events 300000 --out F.jsonl
    python -m benchmarks.bench_catalogue windows --events 10000000 --out F.jsonl

`speed`: SASRec on synthetic data (trainer.synth.generate) over each catalogue size, for the
default config (loss auto) and for loss forced to ce and to sampled_softmax, each in its own
process (peak RSS is the process's): `--steps` timed training steps after 3 warm-up ones,
events/s = targets trained on per second. `quality`: leave-last-out test metrics (NDCG@10 and
recall@10 over the whole catalogue, seen items excluded, as served) after training on every
event but each user's last, selection on the one before it. `windows`: peak RSS of building
the training windows of `--events` events. Every row carries the 1-minute load average before
and after, since the machine may be shared. One JSON object per line goes to `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np

# Configs by name: overrides of the TrainConfig defaults.
CONFIGS = {
    "default": {},
    "ce": {"loss": "ce"},
    "sampled": {"loss": "sampled_softmax"},
    "sampled512": {
        "loss": "sampled_softmax",
        "negatives": 512,
        "negative_sampling": "popularity",
        "in_batch_negatives": 256,
    },
}


def load() -> float:
    return float(open("/proc/loadavg").read().split()[0])


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synth_sequences(items: int, users: int, events: int, seed: int = 0) -> list[np.ndarray]:
    """Per user, tokens oldest first, of trainer.synth's generator (topics ~ items / 50)."""
    from recsys.schema import FIRST_TOKEN
    from trainer.synth import SynthConfig, generate

    cfg = SynthConfig(items=items, users=users, interactions=events, topics=max(1, items // 50), seed=seed)
    sequences = []
    for user, item, _ in generate(cfg):
        sequences.extend(np.split(item + FIRST_TOKEN, np.flatnonzero(np.diff(user)) + 1))
    return sequences


def ml100k_sequences(path: str) -> tuple[list[np.ndarray], int]:
    import pandas as pd

    from recsys.schema import FIRST_TOKEN

    df = pd.read_csv(os.path.join(path, "interactions.csv")).sort_values(["user_id", "timestamp"], kind="stable")
    codes, _ = pd.factorize(df["item_id"], sort=True)
    tokens = codes.astype(np.int64) + FIRST_TOKEN
    bounds = np.flatnonzero(np.diff(df["user_id"].to_numpy())) + 1
    return np.split(tokens, bounds), int(codes.max()) + 1


def speed_one(items: int, loss: str, steps: int, batch_size: int, precision: str, threads: int) -> dict:
    """Times `steps` training steps of the loop's own step over a fresh family; in this process."""
    import torch

    from trainer.families.next_item import NextItemFamily, TrainConfig
    from trainer.loop import make_optimizer, set_seed

    if threads:
        torch.set_num_threads(threads)
    users = max(2_000, (steps + 3) * batch_size)  # one window per user at ~20 events each
    sequences = synth_sequences(items, users, max(20 * users, items))
    cfg = replace(TrainConfig(batch_size=batch_size, precision=precision, threads=threads), **CONFIGS[loss])
    family = NextItemFamily(cfg, sequences, items)
    set_seed(0)
    model = family.build_model()
    optimizer = make_optimizer(family.cfg, model)
    batches = family.batches(np.random.default_rng(0))
    seen, start = 0, None
    for i in range(steps + 3):
        if i == 3:
            seen, start = 0, time.perf_counter()
        batch = next(batches)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss_value = family.loss(model, *batch)
        optimizer.zero_grad(set_to_none=True)
        loss_value.backward()
        optimizer.step()
        seen += family.count(batch)
    seconds = time.perf_counter() - start
    return {
        "items": items,
        "config": loss,
        "ran": family.settings,
        "batch_size": batch_size,
        "steps": steps,
        "events_per_s": round(seen / seconds),
        "seconds": round(seconds, 1),
        "peak_rss_mb": round(peak_rss_mb()),
    }


def test_metrics(model, sequences: list[np.ndarray], num_items: int, cfg) -> dict:
    """NDCG@10 / recall@10 of each user's last event after the rest, seen items excluded."""
    from trainer.families.next_item import validate

    users = [s for s in sequences if len(s) >= 4]
    row = validate(model, [s[:-1] for s in users], np.array([s[-1] for s in users]), num_items, cfg)
    return {"ndcg@10": round(row["ndcg@10"], 4), "recall@10": round(row["hr@10"], 4), "users": len(users)}


def quality_one(
    data: str, loss: str, seed: int, items: int, events: int, epochs: int, threads: int, precision: str = "fp32"
) -> dict:
    from trainer.families.next_item import TrainConfig, fit

    if data == "synth":
        sequences, num_items = synth_sequences(items, events // 20, events, seed=0), items
    else:
        sequences, num_items = ml100k_sequences(data)
    cfg = replace(TrainConfig(seed=seed, epochs=epochs, threads=threads, precision=precision), **CONFIGS[loss])
    start = time.perf_counter()
    result = fit(cfg, [s[:-1] for s in sequences], num_items, progress=False)  # the last event is the test
    return {
        "data": os.path.basename(data.rstrip("/")),
        "items": num_items,
        "events": int(sum(map(len, sequences))),
        "config": loss,
        "ran": result.settings,
        "seed": seed,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "train_seconds": round(time.perf_counter() - start),
        "valid_ndcg@10": round(result.best_metrics["ndcg@10"], 4),
        **{f"test_{k}": v for k, v in test_metrics(result.model, sequences, num_items, cfg).items()},
    }


def windows_one(events: int, max_len: int) -> dict:
    from trainer.data.batches import training_windows

    rng = np.random.default_rng(0)
    lengths = np.maximum(2, rng.geometric(1 / 40, events // 40))
    flat = rng.integers(1, 100_000, int(lengths.sum()), dtype=np.int64)
    sequences = np.split(flat, np.cumsum(lengths)[:-1])
    before = peak_rss_mb()
    start = time.perf_counter()
    inputs, targets, _ = training_windows(sequences, max_len, rng, origins=True, dtype=np.int32)
    return {
        "events": int(lengths.sum()),
        "windows": len(inputs),
        "window_mb": round((inputs.nbytes + targets.nbytes) / 2**20),
        "rss_before_mb": round(before),
        "peak_rss_mb": round(peak_rss_mb()),
        "seconds": round(time.perf_counter() - start, 1),
    }


def child(args: list[str]) -> dict:
    """Runs one case in a fresh process (its own peak RSS) and returns its JSON row."""
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_catalogue", "one", *args], capture_output=True, text=True
    )
    if out.returncode:
        return {"case": args, "error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("speed", "quality", "windows", "one"))
    p.add_argument("--items", default="1682,50000,200000")
    p.add_argument("--configs", default="default,ce,sampled")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--ce-batch-size", type=int, default=0, help="forced ce above 100k items: this batch (0: same)")
    p.add_argument("--ce-steps", type=int, default=0, help="forced ce from 10k items: this many steps (0: same)")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data", default="data/ml-100k", help="a MovieLens directory, or 'synth'")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--events", type=int, default=300_000)
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--case", default="", help="(internal) one case as JSON")
    p.add_argument("--out", default="")
    a = p.parse_args(argv)
    if a.what == "one":
        case = json.loads(a.case)
        kind = case.pop("kind")
        row = {"speed": speed_one, "quality": quality_one, "windows": windows_one}[kind](**case)
        print(json.dumps(row))
        return
    cases = []
    if a.what == "speed":
        for items in map(int, a.items.split(",")):
            for config in a.configs.split(","):
                batch = a.ce_batch_size if (config == "ce" and items > 100_000 and a.ce_batch_size) else a.batch_size
                steps = a.ce_steps if (config == "ce" and items >= 10_000 and a.ce_steps) else a.steps
                cases.append(
                    {"kind": "speed", "items": items, "loss": config, "steps": steps, "batch_size": batch}
                    | {"precision": a.precision, "threads": a.threads}
                )
    elif a.what == "quality":
        for seed in map(int, a.seeds.split(",")):
            for config in a.configs.split(","):
                cases.append(
                    {
                        "kind": "quality",
                        "data": a.data,
                        "loss": config,
                        "seed": seed,
                        "items": int(a.items.split(",")[0]),
                    }
                    | {"events": a.events, "epochs": a.epochs, "threads": a.threads, "precision": a.precision}
                )
    else:
        cases.append({"kind": "windows", "events": a.events, "max_len": a.max_len})
    for case in cases:
        before = load()
        row = child(["--case", json.dumps(case)])
        row |= {"load_before": before, "load_after": load(), "at": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
        line = json.dumps(row)
        print(line, flush=True)
        if a.out:
            with open(a.out, "a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()
