"""Data-parallel training (trainer/distributed.py): 2 gloo ranks on CPU against 1 process.

The 2-rank run splits every batch of the 1-process run in two and averages the gradients, so
the two differ only by float summation order and per-rank dropout masks; on the ring data
their validation metrics agree within TOLERANCE (measured: |delta NDCG@10| about 0.005).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from recsys.cli import _without_nproc
from trainer import distributed, pipeline
from trainer.data.encoding import build_item_index, encode_histories
from trainer.data.tables import load_tables
from trainer.distributed import Dist
from trainer.families.next_item import TrainConfig, fit
from trainer.pipeline import train_and_export

TOLERANCE = 0.06  # absolute, on NDCG@10 and HR@10 (both near 0.75 here)
SETTINGS = {
    "epochs": 9,
    "batch_size": 32,
    "max_len": 10,
    "hidden": 32,
    "heads": 2,
    "layers": 1,
    "inner": 64,
    "dropout": 0.1,
    "lr": 5e-3,
    "eval_every": 3,
    "patience": 3,
    "seed": 0,
    "refit_epochs": 1,
}  # refit after selection: every rank must take rank 0's weights


def test_shards_are_disjoint_and_cover_the_batch():
    batch = torch.arange(10)
    parts = [Dist(rank=r, world_size=3).shard(batch)[0] for r in range(3)]
    assert sorted(torch.cat(parts).tolist()) == list(range(10))
    assert [len(p) for p in parts] == [4, 3, 3]


def test_a_world_of_one_changes_nothing(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    dist = distributed.init_from_env()
    assert dist == Dist() and dist.is_main and not dist.enabled
    assert dist.from_main(7) == 7 and dist.mean(0.5) == 0.5


def test_half_set_environment_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        distributed.init_from_env()


def test_nproc_is_removed_from_the_ranks_command_line():
    argv = ["train", "--nproc", "2", "--out", "x", "--nproc=3", "--quiet"]
    assert _without_nproc(argv) == ["train", "--out", "x", "--quiet"]


def test_only_rank_zero_writes_the_artifact(ring_data, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "distributed", types.SimpleNamespace(current=lambda: Dist(rank=1, world_size=2)))
    cfg = TrainConfig(**{**SETTINGS, "epochs": 1, "refit_epochs": 0})
    out = tmp_path / "artifact"
    assert train_and_export(ring_data["train"], out, cfg, progress=False, log=lambda *_: None) is None
    assert not out.exists()


@pytest.mark.slow
def test_two_ranks_match_one_process(ring_data, tmp_path):
    tables = load_tables(ring_data["train"])
    _, sequences = encode_histories(tables.interactions, build_item_index(tables.interactions, None))
    single = fit(TrainConfig(**SETTINGS), sequences, tables.report.items, progress=False).best_metrics

    config = tmp_path / "train.json"
    config.write_text(json.dumps({k: v for k, v in SETTINGS.items() if k not in ("epochs", "seed")}))
    recsys = [sys.executable, "-m", "recsys.cli"]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    run = subprocess.run(
        [
            *recsys,
            "train",
            "--interactions",
            str(ring_data["train"]),
            "--out",
            str(tmp_path / "two"),
            "--config",
            str(config),
            "--epochs",
            "9",
            "--seed",
            "0",
            "--nproc",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    double = manifest["metrics"]
    print(f"1 process {single}\n2 ranks {double}")  # shown with -rP: the figure quoted in the README
    for key in ("valid_ndcg@10", "valid_hr@10"):
        assert abs(double[key] - single[key.removeprefix("valid_")]) <= TOLERANCE, (key, double[key], single)
    assert double["valid_ndcg@10"] > 0.3  # both learned the ring, not merely agreed on noise
    # one data summary per rank: both ranks read the data, one artifact came out
    assert run.stdout.count("kept:") == 2
    assert Path(tmp_path / "two.ckpt" / "checkpoint.pt").exists()


@pytest.mark.slow
@pytest.mark.parametrize("model", ["deepfm", "two_tower"])
def test_feature_families_train_and_export_under_ddp(ring_data, tmp_path, model):
    """`recsys train --nproc 2` for the families that read features: two gloo ranks, one artifact."""
    out = tmp_path / model
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "recsys.cli",
            "train",
            "--model",
            model,
            "--nproc",
            "2",
            "--interactions",
            str(ring_data["train"]),
            "--users",
            str(ring_data["users"]),
            "--items",
            str(ring_data["items"]),
            "--out",
            str(out),
            "--epochs",
            "2",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["training"]["config"]["epochs"] == 2


# --- per-rank shards of a Parquet log (trainer/data/shards.py) ---------------------------------


def _log(path: Path, users: list, items: list[str]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"user_id": users, "item_id": items, "timestamp": list(range(len(users)))})
    pq.write_table(table, path, row_group_size=7)
    return path


def test_users_are_split_disjointly_evenly_and_the_same_in_every_process():
    from trainer.data.shards import user_ranks

    ids = [f"user-{n}" for n in range(8_000)]
    ranks = user_ranks(ids, 4)
    assert set(ranks.tolist()) == {0, 1, 2, 3}
    assert all(abs((ranks == r).mean() - 0.25) < 0.03 for r in range(4))
    code = "from trainer.data.shards import user_ranks; print(user_ranks([f'user-{n}' for n in range(50)], 4).tolist())"
    for seed in ("1", "2"):  # Python's str hash differs per process; the shard must not
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        assert json.loads(out.stdout) == ranks[:50].tolist()
    assert user_ranks(ids[:10], 1).tolist() == [0] * 10
    with pytest.raises(ValueError, match="world must be >= 1"):
        user_ranks(ids, 0)


def test_parquet_shards_keep_each_users_rows_together_and_cover_the_log(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from trainer.data import shards

    monkeypatch.setattr(shards, "_BATCH_ROWS", 5)  # many batches: a user's rows span several
    users = [n % 13 for n in range(100)]  # integer ids, as Parquet files often have
    path = _log(tmp_path / "log.parquet", users, [f"i{n % 9}" for n in range(100)])
    parts = [shards.read_user_shard(path, r, 3).to_pylist() for r in range(3)]
    assert sorted(row["timestamp"] for part in parts for row in part) == list(range(100))
    owners = {}
    for rank, part in enumerate(parts):
        assert [row["timestamp"] for row in part] == sorted(row["timestamp"] for row in part)  # file order
        for row in part:
            assert owners.setdefault(row["user_id"], rank) == rank
    assert owners == dict(zip(range(13), shards.user_ranks([str(u) for u in range(13)], 3).tolist()))
    assert pq.read_table(path).schema == shards.read_user_shard(path, 0, 3).schema
    gaps = _log(tmp_path / "gaps.parquet", ["a", None, "b", None], ["i"] * 4)  # missing ids: rank 0's, once
    owners = shards.user_ranks(["a", "b"], 2)
    expected = [2 * (r == 0) + int((owners == r).sum()) for r in range(2)]
    assert [shards.read_user_shard(gaps, r, 2).num_rows for r in range(2)] == expected
    with pytest.raises(ValueError, match=r"rank must be in \[0, 3\)"):
        shards.read_user_shard(path, 3, 3)
    with pytest.raises(ValueError, match="no 'uid' column"):
        shards.read_user_shard(path, 0, 3, user_column="uid")


def test_agreements_in_a_world_of_one_are_the_local_values():
    from collections import Counter

    from trainer.data.shards import agreed_item_counts, agreed_steps

    assert agreed_item_counts(["a", "b", "a"], Dist()) == Counter({"a": 2, "b": 1})
    assert agreed_steps(7, Dist()) == 7 and Dist().gather_objects({"x": 1}) == [{"x": 1}]


SHARD_WORKER = """
import json, sys
from collections import Counter
import numpy as np
from recsys.schema import FIRST_TOKEN
from trainer import distributed
from trainer.data.shards import agreed_item_counts, agreed_steps, item_index_from_counts, read_log_shard
from trainer.families.next_item import NextItemFamily, TrainConfig

dist = distributed.init_from_env()
table = read_log_shard(sys.argv[1], dist.rank, dist.world_size)
items = table.column("item_id").to_pylist()
counts = agreed_item_counts(items, dist)
steps = agreed_steps(len(items) // 4, dist)
index = item_index_from_counts(counts)
token = {item: n + FIRST_TOKEN for n, item in enumerate(index.item_ids)}
histories = {}
for row in table.to_pylist():  # file order is time order here
    histories.setdefault(row["user_id"], []).append(token[row["item_id"]])
cfg = TrainConfig(shard_by_user=True, batch_size=8, max_len=4, hidden=8, heads=1, layers=1, inner=8)
sequences = [np.array(h) for h in histories.values()]
family = NextItemFamily(cfg, sequences, len(index.item_ids))
sizes = [len(batch[0]) for batch in family.batches(np.random.default_rng(dist.rank))]
alone = NextItemFamily(cfg.__class__(**{**cfg.__dict__, "shard_by_user": False, "batch_size": 4}), sequences, len(index.item_ids))
local = sum(1 for _ in alone.batches(np.random.default_rng(0)))  # this rank's batches of 4, all of them
out = {"rows": len(items), "users": sorted(set(table.column("user_id").to_pylist())),
       "counts": dict(counts), "steps": steps, "local_steps": len(items) // 4,
       "item_ids": list(index.item_ids), "batch_sizes": sizes, "epoch_steps": family.epoch_steps,
       "local_batches": local}
open(f"{sys.argv[2]}.{dist.rank}", "w").write(json.dumps(out))
distributed.shutdown()
"""


@pytest.mark.slow
def test_two_gloo_ranks_read_their_own_users_and_agree_on_items_and_steps(tmp_path):
    """A directory of two Parquet files: each rank reads its users from both, both build one
    item index (the whole log's), and both run the same number of half-size batches."""
    from collections import Counter

    import pandas as pd

    from trainer.data.encoding import build_item_index

    users = [f"u{(n * 5) % 11}" for n in range(120)]
    items = [f"i{(n * 7) % 17}" for n in range(120)]
    path = tmp_path / "log"
    path.mkdir()
    _log(path / "part-0.parquet", users[:50], items[:50])
    _log(path / "part-1.parquet", users[50:], items[50:])
    (path / "_SUCCESS").write_text("")  # as Spark leaves it: not data
    (tmp_path / "worker.py").write_text(SHARD_WORKER)
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env |= {
        "OMP_NUM_THREADS": "1",
        "RECSYS_DIST_BACKEND": "gloo",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
        + [str(tmp_path / "worker.py"), str(path), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"out.{r}").read_text()) for r in range(2)]
    assert ranks[0]["rows"] + ranks[1]["rows"] == 120 and min(r["rows"] for r in ranks) > 0
    assert not set(ranks[0]["users"]) & set(ranks[1]["users"])
    assert ranks[0]["counts"] == ranks[1]["counts"] == dict(Counter(items))  # one vocabulary
    assert ranks[0]["steps"] == ranks[1]["steps"] == min(r["local_steps"] for r in ranks)
    whole = build_item_index(pd.DataFrame({"item_id": items}), None).item_ids
    assert ranks[0]["item_ids"] == ranks[1]["item_ids"] == list(whole)
    # each rank batches its own windows, 8 / 2 a batch, as many batches as the smaller shard has
    assert len(ranks[0]["batch_sizes"]) == len(ranks[1]["batch_sizes"]) == min(r["local_batches"] for r in ranks)
    assert all(r["epoch_steps"] == len(r["batch_sizes"]) and max(r["batch_sizes"]) == 4 for r in ranks)


def test_the_agreed_item_index_orders_items_as_a_whole_log_does():
    from collections import Counter

    import pandas as pd

    from trainer.data.encoding import build_item_index
    from trainer.data.shards import item_index_from_counts

    rng = __import__("numpy").random.default_rng(0)
    log = pd.DataFrame({"item_id": [f"i{n}" for n in rng.integers(0, 30, 400)]})  # many ties
    items = pd.DataFrame({"item_id": ["i3", "i7", "i3"], "title": ["old", "Seven", "Three"]})
    assert item_index_from_counts(Counter(log["item_id"]), items) == build_item_index(log, items)


def test_parquet_shards_refuse_what_they_cannot_read(tmp_path):
    from trainer.data.shards import parquet_files

    csv = tmp_path / "log.csv"
    csv.write_text("user_id,item_id,timestamp\nu,i,1\n")
    with pytest.raises(ValueError, match="read Parquet"):
        parquet_files(csv)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no Parquet files"):
        parquet_files(tmp_path / "empty")
    hive = tmp_path / "hive" / "day=1"
    hive.mkdir(parents=True)
    _log(hive / "part-0.parquet", ["u"], ["i"])
    with pytest.raises(ValueError, match=r"hive partition columns \(day\)"):
        parquet_files(tmp_path / "hive")
    with pytest.raises(ValueError, match="no such file"):
        parquet_files(tmp_path / "missing")


def test_shard_by_user_refuses_what_it_cannot_do(ring_data, tmp_path, monkeypatch):
    quiet = {"progress": False, "log": lambda *_: None}
    cfg = TrainConfig(**{**SETTINGS, "epochs": 1, "shard_by_user": True})
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ValueError, match="under torchrun"):
        train_and_export(ring_data["train"], tmp_path / "a", cfg, **quiet)
    # the checks that need no collective, as rank 1 of 2 would meet them
    monkeypatch.setattr(pipeline, "distributed", types.SimpleNamespace(current=lambda: Dist(rank=1, world_size=2)))
    with pytest.raises(ValueError, match="read Parquet"):
        train_and_export(ring_data["train"], tmp_path / "a", cfg, **quiet)  # a CSV file
    parquet = tmp_path / "log.parquet"
    _log(parquet, ["u"], ["i"])
    for model in ("ensemble", "itemknn"):
        with pytest.raises(ValueError, match=f"not '{model}'"):
            train_and_export(parquet, tmp_path / "a", TrainConfig(model=model, shard_by_user=True), **quiet)
    with pytest.raises(ValueError, match="--resume are not supported"):
        train_and_export(parquet, tmp_path / "a", cfg, resume=True, **quiet)
    assert not (tmp_path / "a").exists()


@pytest.mark.slow
def test_two_ranks_train_on_their_own_users_and_rank_zero_exports_every_user(ring_data, tmp_path):
    """`recsys train --nproc 2` with shard_by_user over a directory of Parquet files: each rank
    reads its users, rank 0 validates its own and writes an artifact holding every user's
    history, which serves (ONNX parity, offline evaluation as the server ranks)."""
    import pandas as pd

    from trainer.data.shards import user_ranks
    from trainer.evaluate import evaluate_artifact

    log = pd.read_csv(ring_data["train"], dtype={"user_id": str, "item_id": str})
    # one user's events are of a kind the other rank never reads: the ranks must still agree on two kinds
    log["event"] = ["buy" if u == log["user_id"].iloc[0] else "view" for u in log["user_id"]]
    (tmp_path / "log").mkdir()
    log.iloc[: len(log) // 2].to_parquet(tmp_path / "log" / "part-0.parquet", index=False)
    log.iloc[len(log) // 2 :].to_parquet(tmp_path / "log" / "part-1.parquet", index=False)
    config = tmp_path / "train.json"
    config.write_text(json.dumps({**SETTINGS, "epochs": 6, "shard_by_user": True}))
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    run = subprocess.run(
        [sys.executable, "-m", "recsys.cli", "train", "--interactions", str(tmp_path / "log")]
        + ["--out", str(tmp_path / "art"), "--config", str(config), "--nproc", "2"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**env, "RECSYS_DIST_BACKEND": "gloo"},
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    users = sorted(log["user_id"].unique())
    mine = [u for u, r in zip(users, user_ranks(users, 2)) if r == 0]
    for rank, count in ((0, len(mine)), (1, len(users) - len(mine))):
        rows = int((log["user_id"].isin(mine) == (rank == 0)).sum())
        assert (
            f"(rank {rank} of 2: its users)" in run.stdout and f"kept: {rows} interactions, {count} users" in run.stdout
        )
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert manifest["training"]["data"]["users"] == len(users)
    assert manifest["training"]["data"]["interactions"] == len(log)
    assert manifest["training"]["shards"] == {"world_size": 2, "rank0_users": len(mine)}
    assert manifest["training"]["events"] == ["buy", "view"]
    histories = [json.loads(line) for line in (tmp_path / "art" / "histories.jsonl").read_text().splitlines()]
    assert sorted(h["user_id"] for h in histories) == users
    first = log[log["user_id"] == users[-1]]
    assert next(h for h in histories if h["user_id"] == users[-1])["item_ids"] == first["item_id"].tolist()
    assert manifest["metrics"]["export_parity_max_abs_diff"] < 1e-4
    assert manifest["metrics"]["valid_ndcg@10"] > 0.3  # learned the ring
    served = evaluate_artifact(tmp_path / "art", ring_data["test"])
    assert served["users"] == len(users) and served["ndcg@10"] > 0.3
