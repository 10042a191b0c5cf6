"""`make demo`: ML-100K -> SASRec -> ONNX -> feature service + inference server -> recommendations.

Every step goes through the real `recsys` command, as a user would run it.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc

from recsys.client import format_recommendations, free_port, recommend, wait_serving
from recsys.v1 import features_pb2, features_pb2_grpc, types_pb2

RECSYS = [sys.executable, "-m", "recsys.cli"]


def step(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def show(target: str, user: str, k: int = 5) -> list[str]:
    response = recommend(target, user, k)
    print(format_recommendations(user, response), flush=True)
    return [i.item_id for i in response.items]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="data/ml-100k")
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--users", default="1,13,405")
    args = parser.parse_args()
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    artifact = out / "sasrec"

    step(f"1. MovieLens-100K into {data}")
    subprocess.run([*RECSYS, "data", "download", "movielens-100k", "--to", str(data)], check=True)

    step(f"2. Train SASRec (at most {args.epochs} epochs, early stopping on NDCG@10) and export {artifact}")
    subprocess.run(
        [
            *RECSYS,
            "train",
            "--interactions",
            str(data / "interactions.csv"),
            "--users",
            str(data / "users.csv"),
            "--items",
            str(data / "items.csv"),
            "--model",
            "sasrec",
            "--out",
            str(artifact),
            "--epochs",
            str(args.epochs),
        ],
        check=True,
    )

    step("3. Start the feature service and the inference server")
    fport, iport = free_port(), free_port()
    store = out / "features.sqlite"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{store}{suffix}").unlink(missing_ok=True)  # a fresh store, so the demo replays the same
    features = subprocess.Popen(
        [
            *RECSYS,
            "serve",
            "features",
            "--artifact",
            str(artifact),
            "--store",
            f"sqlite://{store.resolve()}",
            "--host",
            "127.0.0.1",
            "--port",
            str(fport),
        ]
    )
    inference = subprocess.Popen(
        [
            *RECSYS,
            "serve",
            "inference",
            "--artifact",
            str(artifact),
            "--features",
            f"127.0.0.1:{fport}",
            "--host",
            "127.0.0.1",
            "--port",
            str(iport),
        ]
    )
    target = f"127.0.0.1:{iport}"
    try:
        wait_serving(f"127.0.0.1:{fport}", features)
        wait_serving(target, inference)

        step("4. Recommendations (seen movies excluded)")
        users = args.users.split(",")
        with grpc.insecure_channel(f"127.0.0.1:{fport}") as channel:
            fstub = features_pb2_grpc.FeatureServiceStub(channel)
            for user in users:
                reply = fstub.GetUserFeatures(
                    features_pb2.GetUserFeaturesRequest(user_ids=[user], max_history=3), timeout=5
                )
                recent = reply.users[0].history
                titles = fstub.GetItemFeatures(features_pb2.GetItemFeaturesRequest(item_ids=list(recent)), timeout=5)
                print(f"\nuser {user} recently watched: " + "; ".join(i.features["title"].text for i in titles.items))
                show(target, user)

            step(f"5. User {users[0]} watches their top recommendation: RecordInteractions, then Recommend again")
            before = recommend(target, users[0], 5)
            watched = before.items[0]
            fstub.RecordInteractions(
                features_pb2.RecordInteractionsRequest(
                    interactions=[
                        types_pb2.Interaction(user_id=users[0], item_id=watched.item_id, timestamp=int(time.time()))
                    ]
                ),
                timeout=5,
            )
            print(f"recorded: user {users[0]} watched {watched.item_id} ({watched.title})")
            after = show(target, users[0])
            changed = [i.item_id for i in before.items] != after
            print(f"list changed: {changed}; {watched.item_id} now excluded as seen: {watched.item_id not in after}")

        step("6. A user the system has never seen gets popular movies, flagged as such")
        show(target, "new-visitor-42")
    finally:
        step("7. Stop both services (SIGTERM, graceful drain)")
        for proc in (inference, features):
            proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(timeout=60) for proc in (inference, features)]
        print(f"exit codes: inference {codes[0]}, features {codes[1]}")
    return 0 if codes == [0, 0] else 1


if __name__ == "__main__":
    sys.exit(main())
