"""`make bench-features`: feature-service latency on loopback, against Feast on the same data.

Writes a synthetic data set (users with numeric and categorical features and event histories,
items with text, multi-valued and numeric features) as a recsys artifact and as Feast tables,
then, in one run:

- starts `recsys serve features` on each backend (SQLite, Redis when redis-server is installed,
  memory) and Feast's `feast serve` (HTTP, SQLite online store, in its own virtualenv), each in
  its own process, and times from this process, one call at a time and taking turns in a
  shuffled order on the same requests (so that load from the rest of the machine falls on all
  of them alike): 1 user's features with its 50 most recent events (GetUserFeatures; recsys
  builds the history from its event table at read time, Feast reads it precomputed as an array
  feature) and 100 items' features (GetItemFeatures);
- beside them, the floor: benchmarks/bench_echo_server.py answering the same calls with the SQLite
  service's own reply bytes and no work, i.e. one Python gRPC round trip of that size;
- then the same reads in-process, without a server: FeatureServiceCore over SQLite, and Feast's
  SDK call (`FeatureStore.get_online_features`, benchmarks/bench_feast.py in Feast's virtualenv).

Prints a table and writes OUT/results.json. A benchmark, not a test: figures depend on the
machine and its load (the load average is recorded with them).

    python -m benchmarks.bench_features [--out .bench/run] [--feast-python .bench/feast-venv/bin/python]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc

from benchmarks.bench_timing import percentiles, timed
from feature_service.service import FeatureServiceCore
from feature_service.stores import SqliteStore
from recsys.artifact import HISTORIES, ITEMS, MANIFEST, USERS, Manifest, ModelInput, write_jsonl
from recsys.client import free_port, wait_serving
from recsys.schema import FeatureKind, FeatureSchema, FeatureSpec
from recsys.v1 import features_pb2, features_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]  # the child processes run from here (python -m benchmarks...)

GENRES = [
    "Action",
    "Adventure",
    "Animation",
    "Children",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
]
OCCUPATIONS = [f"occupation-{n}" for n in range(21)]
MAX_HISTORY = 50
FEAST_USER_FEATURES = ["age", "gender", "occupation", "history", "history_timestamps"]
FEAST_ITEM_FEATURES = ["title", "genres", "year"]


def write_data(out: Path, users: int, items: int, seed: int) -> tuple[list[str], list[str]]:
    """The artifact (for recsys) and feast_*.jsonl (for Feast) of one synthetic data set."""
    rng = random.Random(seed)
    item_ids = [f"i{n}" for n in range(items)]
    user_ids = [f"u{n}" for n in range(users)]
    weights = [1 / (rank + 1) ** 0.8 for rank in range(items)]  # popularity: a long tail
    schema = FeatureSchema(
        user_features=(
            FeatureSpec("age", FeatureKind.NUMERIC, mean=35.0, std=12.0),
            FeatureSpec("gender", FeatureKind.CATEGORICAL, vocabulary=("F", "M")),
            FeatureSpec("occupation", FeatureKind.CATEGORICAL, vocabulary=tuple(OCCUPATIONS)),
        ),
        item_features=(
            FeatureSpec("title", FeatureKind.TEXT),
            FeatureSpec("genres", FeatureKind.MULTI_CATEGORICAL, vocabulary=tuple(sorted(GENRES))),
            FeatureSpec("year", FeatureKind.NUMERIC, mean=1990.0, std=15.0),
        ),
        max_history=MAX_HISTORY,
        item_index_sha256="bench",
    )
    artifact = out / "artifact"
    artifact.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(
        model_kind="sasrec",
        task="next_item",
        model_version="bench",
        inputs=(ModelInput("item_seq", "user.history"),),
        output="scores",
        num_items=items,
        schema=schema,
        item_index_sha256="bench",
    )
    (artifact / MANIFEST).write_text(manifest.to_json())
    user_rows, histories, feast_users = [], [], []
    for uid in user_ids:
        features = {
            "age": float(rng.randint(18, 70)),
            "gender": rng.choice("FM"),
            "occupation": rng.choice(OCCUPATIONS),
        }
        length = rng.randint(10, 120)
        seen = rng.choices(item_ids, weights=weights, k=length)
        start = 1_600_000_000 + rng.randint(0, 10_000_000)
        stamps = sorted(start + rng.randint(0, 5_000_000) for _ in range(length))
        user_rows.append({"user_id": uid, "features": features})
        histories.append({"user_id": uid, "item_ids": seen, "timestamps": stamps})
        feast_users.append(
            {"user_id": uid, **features, "history": seen[-MAX_HISTORY:], "history_timestamps": stamps[-MAX_HISTORY:]}
        )
    item_rows, feast_items = [], []
    for iid in item_ids:
        features = {
            "title": f"Movie {iid} ({rng.randint(1950, 2020)})",
            "genres": sorted(rng.sample(GENRES, rng.randint(1, 3))),
            "year": float(rng.randint(1950, 2020)),
        }
        item_rows.append({"item_id": iid, "features": features})
        feast_items.append({"item_id": iid, **features})
    write_jsonl(artifact / USERS, user_rows)
    write_jsonl(artifact / ITEMS, item_rows)
    write_jsonl(artifact / HISTORIES, histories)
    write_jsonl(out / "feast_users.jsonl", feast_users)
    write_jsonl(out / "feast_items.jsonl", feast_items)
    (out / "meta.json").write_text(json.dumps({"user_ids": user_ids, "item_ids": item_ids}))
    return user_ids, item_ids


ECHO = "gRPC echo floor (same reply bytes, no work)"


class Server:
    """A server process under test; `stop()` ends it and everything it started."""

    target = ""

    def __init__(self, command: list[str], cwd: Path) -> None:
        self.process = subprocess.Popen(
            command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def recsys_path(artifact: Path, store_url: str, servers: list[Server]) -> tuple:
    """Starts `recsys serve features` on `store_url`; returns its (1-user call, 100-item call)."""
    port = free_port()
    server = Server(
        [
            sys.executable,
            "-m",
            "recsys.cli",
            "serve",
            "features",
            "--artifact",
            str(artifact),
            "--store",
            store_url,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        ROOT,
    )
    servers.append(server)
    target = server.target = f"127.0.0.1:{port}"
    wait_serving(target, server.process)
    stub = features_pb2_grpc.FeatureServiceStub(grpc.insecure_channel(target))

    def users(ids):
        reply = stub.GetUserFeatures(features_pb2.GetUserFeaturesRequest(user_ids=ids), timeout=5)
        assert reply.users[0].found and len(reply.users[0].history) > 0

    def items(ids):
        reply = stub.GetItemFeatures(features_pb2.GetItemFeaturesRequest(item_ids=ids), timeout=5)
        assert all(i.found for i in reply.items)

    return users, items


def echo_floor_path(out: Path, sample: dict[str, list], target: str, servers: list[Server]) -> tuple:
    """Captures the real service's replies to one request of each kind from `target`, then
    starts benchmarks/bench_echo_server.py answering every call with those bytes: the floor of a
    look-up (one gRPC round trip with a response of the same size, no work behind it)."""
    stub = features_pb2_grpc.FeatureServiceStub(grpc.insecure_channel(target))
    replies = {
        "users": stub.GetUserFeatures(features_pb2.GetUserFeaturesRequest(user_ids=sample["users_1"][0]), timeout=5),
        "items": stub.GetItemFeatures(features_pb2.GetItemFeaturesRequest(item_ids=sample["items_100"][0]), timeout=5),
    }
    for kind, reply in replies.items():
        (out / f"echo_{kind}.bin").write_bytes(reply.SerializeToString())
    port = free_port()
    server = Server(
        [
            sys.executable,
            "-m",
            "benchmarks.bench_echo_server",
            "--port",
            str(port),
            "--reply",
            f"recsys.v1.FeatureService/GetUserFeatures={out / 'echo_users.bin'}",
            "--reply",
            f"recsys.v1.FeatureService/GetItemFeatures={out / 'echo_items.bin'}",
        ],
        ROOT,
    )
    servers.append(server)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(channel).result(timeout=60)
    echo = features_pb2_grpc.FeatureServiceStub(channel)

    def users(ids):
        assert echo.GetUserFeatures(features_pb2.GetUserFeaturesRequest(user_ids=ids), timeout=5).users[0].found

    def items(ids):
        assert len(echo.GetItemFeatures(features_pb2.GetItemFeaturesRequest(item_ids=ids), timeout=5).items) == 100

    return users, items


def feast_server_path(feast_python: str, repo: Path, servers: list[Server]) -> tuple:
    """Starts `feast serve` (HTTP, one worker) on the repo; returns its two calls over one
    kept-alive connection, made from this process like the recsys calls."""
    port = free_port()
    server = Server(
        [
            str(Path(feast_python).parent / "feast"),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-log",
            "--workers",
            "1",
            "--max-requests",
            "100000000",
        ],
        repo,
    )
    servers.append(server)
    deadline = time.monotonic() + 180
    while True:
        if server.process.poll() is not None:
            raise RuntimeError("feast serve exited")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", "/health")
            response = conn.getresponse()
            response.read()
            if response.status == 200:
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("feast serve did not answer")
        time.sleep(0.2)
    user_refs = [f"user_features:{f}" for f in FEAST_USER_FEATURES]
    item_refs = [f"item_features:{f}" for f in FEAST_ITEM_FEATURES]

    def post(body: dict) -> dict:
        conn.request(
            "POST", "/get-online-features", body=json.dumps(body), headers={"Content-Type": "application/json"}
        )
        response = conn.getresponse()
        payload = response.read()
        assert response.status == 200, payload[:300]
        return json.loads(payload)

    def users(ids):
        assert post({"features": user_refs, "entities": {"user_id": ids}})["results"]

    def items(ids):
        assert post({"features": item_refs, "entities": {"item_id": ids}})["results"]

    return users, items


def interleaved(paths: dict[str, tuple], requests: dict[str, list], warmup: int, seed: int) -> dict[str, dict]:
    """Times every path on the same requests, taking turns in a shuffled order per request, so
    that load from the rest of the machine falls on all paths alike."""
    rng = random.Random(seed)
    samples: dict[str, dict[str, list[float]]] = {name: {} for name in paths}
    for kind, column in (("users_1", 0), ("items_100", 1)):
        for name, calls in paths.items():
            for request in requests[kind][:warmup]:
                calls[column](request)
            samples[name][kind] = []
        order = list(paths)
        for request in requests[kind][warmup:]:
            rng.shuffle(order)
            for name in order:
                start = time.perf_counter()
                paths[name][column](request)
                samples[name][kind].append((time.perf_counter() - start) * 1000)
    return {name: {kind: percentiles(values) for kind, values in kinds.items()} for name, kinds in samples.items()}


def bench_in_process(artifact: Path, db: Path, requests: dict[str, list], warmup: int) -> dict:
    """The same reads through FeatureServiceCore over SQLite, no gRPC (what Feast's SDK call is)."""
    from recsys.artifact import read_manifest

    with SqliteStore(db) as store:
        core = FeatureServiceCore(store, read_manifest(artifact).schema.contract())
        return {
            "users_1": timed(lambda ids: core.get_user_features(ids), requests["users_1"], warmup),
            "items_100": timed(core.get_item_features, requests["items_100"], warmup),
        }


def feast_helper(feast_python: str, out: Path, *extra: str) -> dict:
    done = subprocess.run(
        [feast_python, "-m", "benchmarks.bench_feast", "--data", str(out), "--repo", str(out / "feast_repo"), *extra],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"benchmarks/bench_feast.py {' '.join(extra)} failed ({done.returncode}): {done.stderr[-3000:]}"
        )
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(results: dict) -> str:
    lines = ["| path | 1 user p50 | 1 user p99 | 100 items p50 | 100 items p99 |", "|---|---|---|---|---|"]
    for name, why in results["not_measured"].items():
        lines.append(f"| {name} | not measured: {why.splitlines()[0]} | | | |")
    for name, figures in results["paths"].items():
        u, i = figures["users_1"], figures["items_100"]
        lines.append(
            f"| {name} | {u['p50_ms']:.2f} ms | {u['p99_ms']:.2f} ms | {i['p50_ms']:.2f} ms | {i['p99_ms']:.2f} ms |"
        )
    ratios = results.get("feast_server_p99_over", {})
    lines += [""] if ratios else []
    lines += [f"Feast server p99 (100 items) / {name} p99: {ratio:.1f}x" for name, ratio in ratios.items()]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / ".bench" / "run")
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--calls-1", type=int, default=3000, help="timed GetUserFeatures calls (1 user) per path")
    parser.add_argument("--calls-100", type=int, default=2000, help="timed GetItemFeatures calls (100 items) per path")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--backends", default="sqlite,redis,memory")
    parser.add_argument("--feast-python", default=str(ROOT / ".bench" / "feast-venv" / "bin" / "python"))
    parser.add_argument("--no-feast", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    out = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    user_ids, item_ids = write_data(out, args.users, args.items, args.seed)
    rng = random.Random(args.seed)
    requests = {
        "users_1": [[rng.choice(user_ids)] for _ in range(args.warmup + args.calls_1)],
        "items_100": [rng.sample(item_ids, 100) for _ in range(args.warmup + args.calls_100)],
    }
    (out / "requests.json").write_text(json.dumps(requests))
    artifact = out / "artifact"
    results: dict = {
        "load_average_before": os.getloadavg(),
        "cpus": os.cpu_count(),
        "users": args.users,
        "items": args.items,
        "paths": {},
        "not_measured": {},
    }

    # absolute, not resolved: the venv's python is a symlink whose own folder is not the venv's
    args.feast_python = str(Path(args.feast_python).absolute())
    feast = None
    if not args.no_feast:
        if not Path(args.feast_python).is_file():
            results["not_measured"]["Feast"] = f"{args.feast_python} does not exist (make bench-features installs it)"
        else:
            print("feast: building the feature repo ...", file=sys.stderr, flush=True)
            try:
                feast = feast_helper(args.feast_python, out, "--setup")
                results["feast_version"] = feast["feast_version"]
            except RuntimeError as exc:
                results["not_measured"]["Feast"] = str(exc)

    servers: list[Server] = []
    paths: dict[str, tuple] = {}
    try:
        for backend in args.backends.split(","):
            print(f"recsys: starting the feature service on {backend} ...", file=sys.stderr, flush=True)
            if backend == "sqlite":
                url = f"sqlite://{out / 'features.db'}"
            elif backend == "memory":
                url = "memory://"
            elif backend == "redis":
                if shutil.which("redis-server") is None:
                    results["not_measured"]["recsys gRPC, redis"] = "redis-server is not installed"
                    continue
                port = free_port()
                servers.append(
                    Server(
                        [
                            "redis-server",
                            "--bind",
                            "127.0.0.1",
                            "--port",
                            str(port),
                            "--dir",
                            str(out),
                            "--appendonly",
                            "yes",
                            "--appendfsync",
                            "everysec",
                            "--save",
                            "",
                        ],
                        out,
                    )
                )
                time.sleep(0.5)
                url = f"redis://127.0.0.1:{port}/0"
            else:
                raise SystemExit(f"unknown backend {backend!r}")
            paths[f"recsys gRPC, {backend}"] = recsys_path(artifact, url, servers)
            if backend == "sqlite":
                print("echo floor: starting the fixed-reply server ...", file=sys.stderr, flush=True)
                paths[ECHO] = echo_floor_path(out, requests, servers[-1].target, servers)
        if feast is not None:
            print("feast: starting feast serve ...", file=sys.stderr, flush=True)
            paths[f"Feast {feast['feast_version']} feature server (HTTP), sqlite"] = feast_server_path(
                args.feast_python, out / "feast_repo", servers
            )
        print(f"timing {len(paths)} servers, interleaved ...", file=sys.stderr, flush=True)
        results["paths"].update(interleaved(paths, requests, args.warmup, args.seed))
    finally:
        for server in reversed(servers):
            server.stop()

    if "sqlite" in args.backends.split(","):
        print("recsys in-process ...", file=sys.stderr, flush=True)
        results["paths"]["recsys in-process, sqlite"] = bench_in_process(
            artifact, out / "features.db", requests, args.warmup
        )
    if feast is not None:
        print("feast SDK in-process ...", file=sys.stderr, flush=True)
        results["paths"][f"Feast {feast['feast_version']} SDK in-process, sqlite"] = feast_helper(
            args.feast_python, out, "--warmup", str(args.warmup)
        )
    feast_server = [f for n, f in results["paths"].items() if n.startswith("Feast") and "server" in n]
    if feast_server:
        results["feast_server_p99_over"] = {
            name: feast_server[0]["items_100"]["p99_ms"] / results["paths"][name]["items_100"]["p99_ms"]
            for name in results["paths"]
            if name.startswith("recsys gRPC") or name == ECHO
        }
    results["load_average_after"] = os.getloadavg()
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(table(results))
    print(
        f"\nload average before/after: {results['load_average_before']} / {results['load_average_after']}; "
        f"{results['cpus']} CPUs; {args.users} users, {args.items} items; results in {out / 'results.json'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
