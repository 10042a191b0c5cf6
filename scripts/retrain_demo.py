"""`make retrain-demo`: a week of retraining in three minutes, with a client asking throughout.

MovieLens-100K is cut by time into three growing days. Day 1 trains and publishes the first
version. Days 2 and 3 each retrain on more data (new items, new users; day 3 also a new user
feature column, `occupation`) and run the daily recipe as a team would: train -> load the
features into the running store -> publish -> the inference server canaries the new version on
5 % of users -> promoted once healthy. A client asks for recommendations the whole time; the
demo fails if one request fails or a version is not promoted.

Every step goes through the real `recsys` command, as a user would run it.
"""

from __future__ import annotations

import argparse
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import pandas as pd

from recsys.client import free_port, wait_serving
from recsys.v1 import admin_pb2, admin_pb2_grpc, inference_pb2, inference_pb2_grpc

RECSYS = [sys.executable, "-m", "recsys.cli"]
# Share of the log (by time) each day trains on, and the columns of users.csv each day has.
DAYS = [(0.70, ["user_id", "age", "gender"]), (0.80, ["user_id", "age", "gender"]), (0.90, None)]


def step(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def recsys(*args: str) -> str:
    return subprocess.run([*RECSYS, *args], check=True, capture_output=True, text=True).stdout


def write_day(data: Path, out: Path, share: float, user_columns: list[str] | None) -> tuple[Path, int, int]:
    """The log up to the `share` quantile of time, with its users and all items; returns the
    directory, and how many users and items it holds."""
    events = pd.read_csv(data / "interactions.csv")
    day = events[events["timestamp"] <= events["timestamp"].quantile(share)]
    out.mkdir(parents=True, exist_ok=True)
    day.to_csv(out / "interactions.csv", index=False)
    users = pd.read_csv(data / "users.csv")
    users[user_columns or list(users.columns)].to_csv(out / "users.csv", index=False)
    pd.read_csv(data / "items.csv").to_csv(out / "items.csv", index=False)
    return out, day["user_id"].nunique(), day["item_id"].nunique()


class Client(threading.Thread):
    """Recommend for random users, as fast as one thread goes; keeps failures and versions."""

    def __init__(self, target: str, users: list[str]) -> None:
        super().__init__(daemon=True)
        self.stub = inference_pb2_grpc.InferenceServiceStub(grpc.insecure_channel(target))
        self.users = users
        self.done = threading.Event()
        self.requests = 0
        self.failures: list[str] = []
        self.versions: Counter[str] = Counter()
        self.degraded = 0

    def run(self) -> None:
        rng = random.Random(0)
        while not self.done.is_set():
            request = inference_pb2.RecommendRequest(user_id=rng.choice(self.users), k=10, exclude_seen=True)
            try:
                reply = self.stub.Recommend(request, timeout=2)
                self.versions[reply.model_version.split(":")[0]] += 1
                self.degraded += reply.degraded
            except grpc.RpcError as exc:
                self.failures.append(f"{exc.code().name}: {exc.details()}")
            self.requests += 1


def rollout_of(admin, version: int, timeout_s: float) -> admin_pb2.RolloutStatus:
    """Waits for the rollout of `version` to end; prints its progress."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        status = admin.GetModelStatus(admin_pb2.GetModelStatusRequest(), timeout=5)
        rollout = status.rollout
        if status.HasField("rollout") and rollout.version == version:
            line = (
                f"  {rollout.mode} of version {version} on {rollout.fraction:.0%} of users: {rollout.state}; "
                f"candidate answered {rollout.candidate.requests} (errors {rollout.candidate.errors}, "
                f"p99 {rollout.candidate.p99_ms:.1f} ms), stable {rollout.stable.requests}"
            )
            if line != last:
                print(line, flush=True)
                last = line
            if rollout.state != "running":
                return rollout
        time.sleep(1)
    raise TimeoutError(f"the rollout of version {version} did not end within {timeout_s:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="data/ml-100k")
    parser.add_argument("--out", default="runs/retrain-demo")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--model", default="sasrec")
    parser.add_argument("--promote-after", type=float, default=20.0, help="seconds a canary must stay healthy")
    args = parser.parse_args()
    data, out = Path(args.data), Path(args.out)
    subprocess.run([*RECSYS, "data", "download", "movielens-100k", "--to", str(data)], check=True)
    out.mkdir(parents=True, exist_ok=True)
    repo, store = out / "repo", f"sqlite://{(out / 'features.sqlite').resolve()}"
    for leftover in [*out.glob("features.sqlite*"), *out.glob("repo/*/*")]:  # a fresh run every time
        subprocess.run(["rm", "-rf", str(leftover)], check=True)

    def retrain(day: int) -> Path:
        share, columns = DAYS[day - 1]
        directory, n_users, n_items = write_day(data, out / f"day{day}", share, columns)
        extra = "" if columns else " (users.csv gains `occupation`)"
        step(f"day {day}: {n_users} users, {n_items} items in the log{extra}: train {args.model}")
        artifact = out / f"day{day}" / "artifact"
        files = ["--users", str(directory / "users.csv"), "--items", str(directory / "items.csv")]
        recsys("train", "--model", args.model, "--interactions", str(directory / "interactions.csv"), *files,
               "--epochs", str(args.epochs), "--out", str(artifact), "--quiet")  # fmt: skip
        print(
            f"  load the features: {recsys('features', 'load', '--artifact', str(artifact), '--store', store).strip()}"
        )
        print(
            f"  publish: {recsys('publish', '--artifact', str(artifact), '--repo', str(repo), '--model', 'recs').strip()}"
        )
        return artifact

    retrain(1)
    step("serve: feature service on the store, inference server on the repository (new versions canaried)")
    fport, iport = free_port(), free_port()
    host = ["--host", "127.0.0.1"]
    features = subprocess.Popen([*RECSYS, "serve", "features", "--store", store, *host, "--port", str(fport)])
    inference = subprocess.Popen(
        [*RECSYS, "serve", "inference", "--repo", str(repo), "--model", "recs", "--features", f"127.0.0.1:{fport}",
         *host, "--port", str(iport), "--watch-interval", "1", "--rollout", f"canary:0.05:{args.promote_after:g}"]
    )  # fmt: skip
    target = f"127.0.0.1:{iport}"
    client = None
    ok = True
    try:
        wait_serving(f"127.0.0.1:{fport}", features)
        wait_serving(target, inference)
        all_users = [str(u) for u in pd.read_csv(data / "users.csv")["user_id"]]
        client = Client(target, all_users)
        client.start()
        admin = admin_pb2_grpc.AdminServiceStub(grpc.insecure_channel(target))
        for day in (2, 3):
            retrain(day)
            rollout = rollout_of(admin, day, timeout_s=args.promote_after + 120)
            print(f"  version {day}: {rollout.state} ({rollout.reason})", flush=True)
            ok &= rollout.state == "promoted"
        time.sleep(2)
    finally:
        if client is not None:
            client.done.set()
            client.join(10)
        step("stop both services (SIGTERM, graceful drain)")
        for proc in (inference, features):
            proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(timeout=60) for proc in (inference, features)]
    if client is not None:
        step("what the client saw")
        print(f"requests {client.requests}, failed {len(client.failures)}, degraded {client.degraded}")
        for version, n in sorted(client.versions.items()):
            print(f"  answered by {version}: {n}")
        for failure in client.failures[:5]:
            print(f"  failure: {failure}")
        ok &= not client.failures
    ok &= codes == [0, 0]
    print("\nretrain demo: " + ("every version promoted, no failed request" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
