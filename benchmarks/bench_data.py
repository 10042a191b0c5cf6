"""Data preparation and feature loading at scale: rows/s per stage, peak RSS, events/s.

    python -m benchmarks.bench_data --rows 10000000 [--dir /tmp/bench-data] [--only NAME]

Writes a synthetic interaction table (string ids, power-law item popularity, 1-5 ratings,
unix-second timestamps) as one Parquet file, a directory of Parquet parts and one CSV, then
runs each measurement in a fresh process so its peak RSS is its own:

    prep-<format>  read + clean + encode (item index, per-user token sequences), each stage timed
    load-sqlite    `load_artifact` of an artifact holding every event into a fresh SQLite store

Prints one JSON object per measurement. Results: docs/results/data-scale.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

CHUNK = 1_000_000
FORMATS = ("parquet", "parquet-dir", "csv")


def synth(directory: Path, rows: int, users: int, items: int, seed: int = 0) -> dict[str, Path]:
    """interactions.parquet, interactions/ (part-*.parquet) and interactions.csv, written in
    chunks of `CHUNK` rows (reused when already there)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {
        "parquet": directory / "interactions.parquet",
        "parquet-dir": directory / "interactions",
        "csv": directory / "interactions.csv",
    }
    done = directory / f"done-{rows}-{users}-{items}-{seed}"
    if done.exists():
        return paths
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, items + 1) ** 0.9
    weights /= weights.sum()
    schema = pa.schema(
        [("user_id", pa.string()), ("item_id", pa.string()), ("timestamp", pa.int64()), ("rating", pa.float64())]
    )
    paths["parquet-dir"].mkdir(exist_ok=True)
    start = 1_600_000_000
    with (
        pq.ParquetWriter(paths["parquet"], schema) as single,
        pacsv.CSVWriter(paths["csv"], schema) as text,
    ):
        for part, offset in enumerate(range(0, rows, CHUNK)):
            n = min(CHUNK, rows - offset)
            user = rng.integers(0, users, n)
            item = rng.choice(items, size=n, p=weights)
            table = pa.table(
                {
                    "user_id": pa.array(np.char.add("u", user.astype(str)).tolist()),
                    "item_id": pa.array(np.char.add("i", item.astype(str)).tolist()),
                    "timestamp": start + offset + np.sort(rng.integers(0, n, n)),
                    "rating": rng.integers(1, 6, n).astype(np.float64),
                },
                schema=schema,
            )
            single.write_table(table, row_group_size=CHUNK)
            text.write_table(table)
            pq.write_table(table, paths["parquet-dir"] / f"part-{part:05d}.parquet")
    done.touch()
    return paths


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prep(path: Path) -> dict:
    """Times reading, cleaning and encoding of one interaction table, as `recsys train` does."""
    from trainer.data.encoding import build_item_index, encode_histories
    from trainer.data.tables import _read_interactions, clean_interactions

    c0, t0 = time.process_time(), time.perf_counter()
    raw = _read_interactions(path, None)
    c1, t1 = time.process_time(), time.perf_counter()
    clean, report = clean_interactions(raw, str(path))
    del raw
    c2, t2 = time.process_time(), time.perf_counter()
    index = build_item_index(clean, None)
    users, sequences = encode_histories(clean, index)
    c3, t3 = time.process_time(), time.perf_counter()
    rows = report.rows_read
    return {
        # CPU seconds (all threads) beside wall seconds: on a shared machine the wall time
        # grows with the load, the CPU time much less.
        "cpu_s": round(c3 - c0, 2),
        "cpu_read_s": round(c1 - c0, 2),
        "cpu_clean_s": round(c2 - c1, 2),
        "cpu_encode_s": round(c3 - c2, 2),
        "rows": rows,
        "read_s": round(t1 - t0, 2),
        "clean_s": round(t2 - t1, 2),
        "encode_s": round(t3 - t2, 2),
        "total_s": round(t3 - t0, 2),
        "rows_per_s": round(rows / (t3 - t0)),
        "read_rows_per_s": round(rows / (t1 - t0)),
        "clean_rows_per_s": round(rows / (t2 - t1)),
        "encode_rows_per_s": round(rows / (t3 - t2)),
        "users": len(users),
        "items": len(index.item_ids),
        "peak_rss_mb": round(_rss_mb()),
    }


def load_sqlite(path: Path, work: Path) -> dict:
    """Exports every event of `path` as an artifact, then loads it into a fresh SQLite store."""
    from feature_service.loader import load_artifact
    from feature_service.stores.sqlite import SqliteStore
    from recsys.artifact import HISTORIES, MANIFEST, Manifest, ModelInput, write_jsonl
    from recsys.schema import FeatureSchema
    from trainer.data.encoding import build_item_index, history_rows
    from trainer.data.tables import load_tables

    tables = load_tables(path)
    index = build_item_index(tables.interactions, None)
    artifact = work / "artifact"
    artifact.mkdir(parents=True, exist_ok=True)
    schema = FeatureSchema(user_features=(), item_features=(), max_history=50, item_index_sha256=index.sha256)
    manifest = Manifest(
        model_kind="sasrec",
        task="next_item",
        model_version="bench",
        inputs=(ModelInput("item_seq", "user.history"),),
        output="scores",
        num_items=len(index.item_ids),
        schema=schema,
        item_index_sha256=index.sha256,
    )
    (artifact / MANIFEST).write_text(manifest.to_json())
    write_jsonl(artifact / HISTORIES, history_rows(tables.interactions))
    events = len(tables.interactions)
    del tables
    db = work / "features.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    cpu, start = time.process_time(), time.perf_counter()
    with SqliteStore(db) as store:
        report = load_artifact(store, artifact)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {
        "events": events,
        "recorded": report.events_recorded,
        "seconds": round(seconds, 1),
        "events_per_s": round(events / seconds),
        "cpu_s": round(cpu, 1),
        "peak_rss_mb": round(_rss_mb()),
        "db_mb": round(db.stat().st_size / 2**20),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "recsys-bench-data")
    parser.add_argument("--only", choices=[*(f"prep-{f}" for f in FORMATS), "load-sqlite"])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    paths = synth(args.dir, args.rows, args.users, args.items)
    if args.child:
        if args.only == "load-sqlite":
            result = load_sqlite(paths["parquet"], args.dir)
        else:
            result = prep(paths[args.only.removeprefix("prep-")])
        print(json.dumps({"name": args.only, **result}), flush=True)
        return
    names = [args.only] if args.only else [*(f"prep-{f}" for f in FORMATS), "load-sqlite"]
    for name in names:
        print(f"# load average before {name}: {os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)
        command = [sys.executable, "-m", "benchmarks.bench_data", "--child", "--only", name]
        command += ["--rows", str(args.rows), "--users", str(args.users), "--items", str(args.items)]
        subprocess.run([*command, "--dir", str(args.dir)], check=True)
        print(f"# load average after {name}: {os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
