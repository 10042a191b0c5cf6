"""`make bench-training`: what training SASRec on ML-100K costs, recsys against RecBole 1.2.1.

In one run, one after the other on the same machine (so both see the same load):

1. RecBole 1.2.1 (its own virtualenv, `--recbole-python`) trains its SASRec on ML-100K with its
   own defaults for model and training (batch 2048, CE over the catalogue, hidden 64, 2 blocks,
   50-item histories) and its default split for sequential models, leave-one-out by time
   (`LS: valid_and_test`, as recsys splits), for exactly one epoch. Reported apart: imports,
   data loading (`create_dataset` + `data_preparation`), building model and trainer, the epoch
   itself (`Trainer._train_epoch`), and the time to the end of the first epoch (`Trainer.fit`
   with `epochs=1`: the epoch plus the validation RecBole runs after it).
2. recsys trains SASRec with its default `TrainConfig` to its final model (`trainer.families.next_item.fit`:
   early stopping on validation, best state restored) on the same data: every user's last
   event held out as the test, the one before it as validation. Reported: data preparation,
   fit wall time, epochs run, best epoch, validation NDCG@10.

Both run as child processes of this script (the same module, `--child recbole|recsys`) with
torch's default thread count. The figure that matters is the ratio of recsys's whole training
to RecBole's single epoch: on a shared machine both absolute times move with the load, so the
1-minute load average is recorded before, between and after the two, and sampled every 5 s
while each runs (`loadavg_1min_during`: compare the two sides' means). Writes OUT/results.json.

    python -m benchmarks.bench_training --recbole-python .bench/recbole-venv/bin/python [--out .bench/training]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the children run from here (python -m)
RESULT_PREFIX = "BENCH_RESULT "  # the child's one line of JSON on stdout starts with this


def recbole_child(epochs: int, workdir: Path) -> dict:
    """RecBole's SASRec on its bundled ML-100K, `epochs` epochs; runs inside RecBole's virtualenv."""
    # torch >= 2.6 loads checkpoints with weights_only=True; RecBole 1.2.1's need pickled objects
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    started = time.perf_counter()
    import recbole
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    imported = time.perf_counter()
    os.chdir(workdir)  # RecBole writes log_tensorboard/ and saved/ into the working directory
    # For "ml-100k" RecBole reads the atomic files its wheel ships (recbole/dataset_example), and
    # its defaults for sequential models split leave-one-out by time (LS valid_and_test, TO).
    # SASRec's default loss is CE, which RecBole 1.2.1 refuses beside its default negative sampling
    # (train_neg_sample_args must be None then): the one setting every CE run has to give.
    config = Config(
        model="SASRec",
        dataset="ml-100k",
        config_dict={"epochs": epochs, "show_progress": False, "train_neg_sample_args": None},
    )
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, _ = data_preparation(config, dataset)
    loaded = time.perf_counter()
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = SASRec(config, train_data.dataset).to(config["device"])
    trainer = Trainer(config, model)
    built = time.perf_counter()

    epoch_seconds: list[float] = []
    train_epoch = trainer._train_epoch

    def timed_epoch(*args, **kwargs):
        t = time.perf_counter()
        out = train_epoch(*args, **kwargs)
        epoch_seconds.append(time.perf_counter() - t)
        return out

    trainer._train_epoch = timed_epoch
    best_valid, _ = trainer.fit(train_data, valid_data, saved=False, show_progress=False)
    fitted = time.perf_counter()
    return {
        "version": recbole.__version__,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(config["device"]),
        "model": "SASRec",
        "defaults": {
            k: config[k]
            for k in (
                "train_batch_size",
                "learning_rate",
                "loss_type",
                "hidden_size",
                "n_layers",
                "n_heads",
                "MAX_ITEM_LIST_LENGTH",
                "eval_step",
                "seed",
                "eval_args",
            )
        },
        "data_path": config["data_path"],
        "interactions": int(dataset.inter_num),
        "users": int(dataset.user_num) - 1,  # RecBole counts a padding id
        "items": int(dataset.item_num) - 1,
        "train_windows": len(train_data.dataset),
        "epochs": epochs,
        "import_seconds": round(imported - started, 2),
        "data_seconds": round(loaded - imported, 2),
        "build_seconds": round(built - loaded, 2),
        "epoch_train_seconds": [round(s, 2) for s in epoch_seconds],
        "first_epoch_end_seconds": round(fitted - built, 2),
        "valid_metric": config["valid_metric"],  # RecBole's default selects on MRR@10
        "valid_score": round(float(best_valid), 4) if best_valid is not None else None,
    }


def recsys_child(data: Path) -> dict:
    """recsys's SASRec, default TrainConfig, trained to its final model; runs in recsys's venv."""
    started = time.perf_counter()
    import torch

    from trainer.data.encoding import build_item_index, encode_histories
    from trainer.data.split import leave_last_out
    from trainer.data.tables import load_tables
    from trainer.families.next_item import TrainConfig, fit

    imported = time.perf_counter()
    interactions = load_tables(data / "interactions.csv").interactions
    train, _ = leave_last_out(interactions)
    index = build_item_index(train, None)
    _, sequences = encode_histories(train, index)
    loaded = time.perf_counter()
    cfg = TrainConfig()
    result = fit(cfg, sequences, len(index.item_ids), progress=False)
    fitted = time.perf_counter()
    epochs = len(result.history)
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "model": cfg.model,
        "config": {
            k: getattr(cfg, k) for k in ("batch_size", "lr", "loss", "max_len", "epochs", "eval_every", "patience")
        },
        "interactions": len(interactions),
        "users": int(interactions["user_id"].nunique()),
        "items": len(index.item_ids),
        "import_seconds": round(imported - started, 2),
        "data_seconds": round(loaded - imported, 2),
        "fit_seconds": round(fitted - loaded, 2),
        "epochs_run": epochs,
        "best_epoch": result.best_epoch,
        "seconds_per_epoch": round((fitted - loaded) / max(epochs, 1), 2),
        "valid_ndcg@10": round(result.best_metrics.get("ndcg@10", float("nan")), 4),
    }


def run_child(python: str, args: list[str], log: Path, timeout_s: float) -> dict:
    """Runs this module as `--child ...` under `python`; its result line, with the wall time and
    the 1-minute load average sampled every 5 s while it ran (mean, min, max)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t = time.perf_counter()
    samples = [load1()]
    with open(log, "w") as err, tempfile.TemporaryFile("w+") as stdout:
        proc = subprocess.Popen(
            [python, "-m", "benchmarks.bench_training", *args], stdout=stdout, stderr=err, text=True, env=env, cwd=ROOT
        )
        while proc.poll() is None:
            if time.perf_counter() - t > timeout_s:
                proc.kill()
                proc.wait()
                raise RuntimeError(f"{' '.join(args)} ran past {timeout_s} s; see {log}")
            time.sleep(5)
            samples.append(load1())
        stdout.seek(0)
        lines = [line for line in stdout.read().splitlines() if line.startswith(RESULT_PREFIX)]
    wall = time.perf_counter() - t
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(args)} failed (exit {proc.returncode}); see {log}")
    load = {"mean": round(sum(samples) / len(samples), 2), "min": min(samples), "max": max(samples)}
    return {
        **json.loads(lines[-1][len(RESULT_PREFIX) :]),
        "process_seconds": round(wall, 2),
        "loadavg_1min_during": load,
    }


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--recbole-python",
        default=".bench/recbole-venv/bin/python",
        help="python of the virtualenv that has recbole==1.2.1",
    )
    parser.add_argument("--data", default="data/ml-100k", help="directory with interactions.csv (recsys side)")
    parser.add_argument("--out", default=".bench/training")
    parser.add_argument("--recbole-epochs", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=3600, help="seconds allowed to each side")
    parser.add_argument("--child", choices=("recbole", "recsys"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child == "recbole":
        with tempfile.TemporaryDirectory(prefix="recbole-bench-") as tmp:
            print(RESULT_PREFIX + json.dumps(recbole_child(args.recbole_epochs, Path(tmp))), flush=True)
        return 0
    if args.child == "recsys":
        print(RESULT_PREFIX + json.dumps(recsys_child(Path(args.data))), flush=True)
        return 0

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not (Path(args.data) / "interactions.csv").exists():
        subprocess.run(
            [sys.executable, "-m", "recsys.cli", "data", "download", "movielens-100k", "--to", args.data],
            check=True,
            cwd=ROOT,
        )
    load = {"before": load1()}
    print(f"RecBole 1.2.1 SASRec, {args.recbole_epochs} epoch(s) ... (load {load['before']})", flush=True)
    recbole = run_child(
        args.recbole_python,
        ["--child", "recbole", "--recbole-epochs", str(args.recbole_epochs)],
        out / "recbole.log",
        args.timeout,
    )
    load["between"] = load1()
    # kept even if the (much longer) recsys side is interrupted
    (out / "results.json").write_text(
        json.dumps({"partial": True, "loadavg_1min": load, "recbole": recbole}, indent=2) + "\n"
    )
    print(
        f"  epoch {recbole['epoch_train_seconds']} s; recsys SASRec to its final model ... (load {load['between']})",
        flush=True,
    )
    ours = run_child(sys.executable, ["--child", "recsys", "--data", args.data], out / "recsys.log", args.timeout)
    load["after"] = load1()
    recbole_epoch = recbole["epoch_train_seconds"][0]
    results = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_1min": load,
            "note": "shared machine: absolute times move with the load; compare the ratio",
        },
        "recbole": recbole,
        "recsys": ours,
        "recbole_one_epoch_seconds": recbole_epoch,
        "recsys_full_training_seconds": ours["fit_seconds"],
        "ratio_recsys_full_over_recbole_epoch": round(ours["fit_seconds"] / recbole_epoch, 3),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(
        f"  recsys: {ours['fit_seconds']} s, {ours['epochs_run']} epochs (best {ours['best_epoch']}), "
        f"valid NDCG@10 {ours['valid_ndcg@10']}  (load {load['after']})"
    )
    print(
        f"RecBole one epoch {recbole_epoch} s (data loading {recbole['data_seconds']} s apart); "
        f"recsys whole training {ours['fit_seconds']} s; ratio {results['ratio_recsys_full_over_recbole_epoch']}"
    )
    print(f"wrote {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
