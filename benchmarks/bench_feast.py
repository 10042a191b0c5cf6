"""The Feast half of `make bench-features`; runs in Feast's own virtualenv, not recsys's.

`--setup` builds a local Feast feature repo (SQLite online store, file registry) over the data
that benchmarks/bench_features.py wrote and writes it to the online store (bench_features.py then
runs `feast serve` on it and times it over HTTP itself); without it, times the same lookups as
the recsys benchmark through Feast's in-process SDK (`FeatureStore.get_online_features`): one
user's features with its recent history, and 100 items' features. Prints one JSON object.

    python -m benchmarks.bench_feast --data DIR --repo DIR [--setup] [--warmup N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
from feast import Entity, FeatureStore, FeatureView, Field, FileSource
from feast.types import Array, Float64, Int64, String

from benchmarks.bench_timing import timed  # standard library only: Feast's venv has no recsys

USER_FEATURES = ["age", "gender", "occupation", "history", "history_timestamps"]
ITEM_FEATURES = ["title", "genres", "year"]


def write_repo(data: Path, repo: Path) -> FeatureStore:
    repo.mkdir(parents=True, exist_ok=True)
    (repo / "feature_store.yaml").write_text(
        "project: bench\n"
        f"registry: {repo / 'registry.db'}\n"
        "provider: local\n"
        "online_store:\n"
        "  type: sqlite\n"
        f"  path: {repo / 'online.db'}\n"
        "entity_key_serialization_version: 3\n"
    )
    now = datetime.now(UTC)
    users = pd.read_json(data / "feast_users.jsonl", lines=True, dtype={"user_id": str})
    items = pd.read_json(data / "feast_items.jsonl", lines=True, dtype={"item_id": str})
    users["event_timestamp"] = now
    items["event_timestamp"] = now
    users.to_parquet(repo / "users.parquet")
    items.to_parquet(repo / "items.parquet")

    user, item = Entity(name="user", join_keys=["user_id"]), Entity(name="item", join_keys=["item_id"])
    user_view = FeatureView(
        name="user_features",
        entities=[user],
        ttl=timedelta(days=3650),
        schema=[
            Field(name="age", dtype=Float64),
            Field(name="gender", dtype=String),
            Field(name="occupation", dtype=String),
            Field(name="history", dtype=Array(String)),
            Field(name="history_timestamps", dtype=Array(Int64)),
        ],
        source=FileSource(path=str(repo / "users.parquet"), timestamp_field="event_timestamp"),
    )
    item_view = FeatureView(
        name="item_features",
        entities=[item],
        ttl=timedelta(days=3650),
        schema=[
            Field(name="title", dtype=String),
            Field(name="genres", dtype=Array(String)),
            Field(name="year", dtype=Float64),
        ],
        source=FileSource(path=str(repo / "items.parquet"), timestamp_field="event_timestamp"),
    )
    store = FeatureStore(repo_path=str(repo))
    store.apply([user, item, user_view, item_view])
    store.write_to_online_store("user_features", users)
    store.write_to_online_store("item_features", items)
    return store


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--setup", action="store_true", help="build the repo and fill the online store")
    parser.add_argument("--warmup", type=int, default=200)
    args = parser.parse_args()

    import feast

    if args.setup:
        started = time.perf_counter()
        write_repo(args.data, args.repo)
        print(json.dumps({"feast_version": feast.__version__, "setup_s": round(time.perf_counter() - started, 1)}))
        return 0

    store = FeatureStore(repo_path=str(args.repo))
    requests = json.loads((args.data / "requests.json").read_text())
    user_refs = [f"user_features:{f}" for f in USER_FEATURES]
    item_refs = [f"item_features:{f}" for f in ITEM_FEATURES]

    def sdk_users(ids):
        out = store.get_online_features(features=user_refs, entity_rows=[{"user_id": i} for i in ids]).to_dict()
        assert out["history"][0], ids  # the user is found, with its history
        return out

    def sdk_items(ids):
        out = store.get_online_features(features=item_refs, entity_rows=[{"item_id": i} for i in ids]).to_dict()
        assert all(t is not None for t in out["title"])
        return out

    print(
        json.dumps(
            {
                "users_1": timed(sdk_users, requests["users_1"], args.warmup),
                "items_100": timed(sdk_items, requests["items_100"], args.warmup),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
