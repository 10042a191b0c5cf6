"""Soak test (loopback only, bounded in time): Recommend at N concurrent clients for a while as
the system around it changes, reporting every request's outcome and the server's memory.

    python -m benchmarks.soak --duration 300 --clients 32 --out runs/soak

What happens, on 127.0.0.1 ports:
1. unless --artifacts is given, three small SASRec artifacts (seeds 0, 1, 2) are trained on
   generated sequential data (the trainer is only used here, before the clock starts);
2. the feature service runs over a SQLite store, the inference server over a model repository
   holding version 1 (`--repo`, watch interval 1 s), both as separate processes;
3. N client threads send Recommend (k=10, each with the user's recent history as the client
   holds it, deadline `--deadline` s) back to back for `--duration` seconds, while at 25 % of
   the run version 2 is published, at 50 % the feature service is killed (SIGKILL) and started
   again `--outage` seconds later, and at 75 % version 3 is published;
4. the report (JSON, printed and written to OUT/soak.json): requests, failures by status code
   (anything but OK; degraded answers are OK and counted apart), latency percentiles, the
   versions that answered, and the inference server's RSS after warm-up and at the end.

The exit status is 0 only with zero failed requests, both new versions served, and RSS growth
under `--max-rss-growth` (10 %).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np

from recsys.client import free_port, wait_serving
from recsys.v1 import inference_pb2, inference_pb2_grpc

RECSYS = [sys.executable, "-m", "recsys.cli"]


def write_data(directory: Path, users: int = 600, items: int = 300, seed: int = 0) -> Path:
    """Users walk a ring of items with some noise: enough structure for a model to learn."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    lines = ["user_id,item_id,timestamp"]
    for u in range(users):
        item, t = int(rng.integers(items)), 1_000_000 + int(rng.integers(10_000))
        for _ in range(int(rng.integers(10, 40))):
            item = (item + 1) % items if rng.random() > 0.15 else int(rng.integers(items))
            t += int(rng.integers(1, 100))
            lines.append(f"u{u:04d},i{item:03d},{t}")
    path = directory / "interactions.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def train_artifacts(out: Path) -> list[Path]:
    data = write_data(out / "data")
    config = out / "train.json"
    config.write_text(
        json.dumps(
            {
                "max_len": 20,
                "hidden": 32,
                "heads": 2,
                "layers": 1,
                "inner": 64,
                "batch_size": 128,
                "eval_every": 2,
                "patience": 2,
            }
        )
    )
    artifacts = []
    for seed in range(3):
        artifact = out / f"artifact-{seed}"
        if not (artifact / "manifest.json").exists():
            subprocess.run(
                [
                    *RECSYS,
                    "train",
                    "--interactions",
                    str(data),
                    "--out",
                    str(artifact),
                    "--epochs",
                    "6",
                    "--seed",
                    str(seed),
                    "--config",
                    str(config),
                    "--quiet",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        artifacts.append(artifact)
    return artifacts


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def histories(artifact: Path, keep: int = 20) -> list[tuple[str, list[str]]]:
    rows = []
    with open(artifact / "histories.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            rows.append((row["user_id"], row["item_ids"][-keep:]))
    return rows


class Load:
    """N closed-loop clients; every outcome is recorded."""

    def __init__(self, target: str, users: list[tuple[str, list[str]]], clients: int, deadline_s: float) -> None:
        self.target, self.users, self.clients, self.deadline_s = target, users, clients, deadline_s
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.codes: Counter[str] = Counter()
        self.degraded = 0
        self.versions: Counter[str] = Counter()
        self.sources: Counter[str] = Counter()
        self.errors: list[str] = []

    def run_client(self, seed: int) -> None:
        rng = random.Random(seed)
        with grpc.insecure_channel(self.target) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            while not self.stop.is_set():
                user, history = rng.choice(self.users)
                request = inference_pb2.RecommendRequest(user_id=user, k=10, exclude_seen=True, history=history)
                start = time.perf_counter()
                try:
                    reply = stub.Recommend(request, timeout=self.deadline_s)
                    elapsed = time.perf_counter() - start
                    with self.lock:
                        self.codes["OK"] += 1
                        self.latencies.append(elapsed)
                        self.degraded += reply.degraded
                        self.versions[reply.model_version.split(":")[0]] += 1
                        self.sources[inference_pb2.Source.Name(reply.source)] += 1
                except grpc.RpcError as exc:
                    with self.lock:
                        self.codes[exc.code().name] += 1
                        if len(self.errors) < 20:
                            self.errors.append(f"{exc.code().name}: {exc.details()}")

    def start(self) -> list[threading.Thread]:
        threads = [threading.Thread(target=self.run_client, args=(i,), daemon=True) for i in range(self.clients)]
        for t in threads:
            t.start()
        return threads


def start_features(artifact: Path, store: str, port: int, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [
            *RECSYS,
            "serve",
            "features",
            "--artifact",
            str(artifact),
            "--store",
            store,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=open(log, "a"),
        stderr=subprocess.STDOUT,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/soak")
    parser.add_argument("--duration", type=float, default=300.0, help="Seconds of load.")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--deadline", type=float, default=5.0, help="Per-request deadline, seconds.")
    parser.add_argument("--outage", type=float, default=10.0, help="Seconds the feature service stays down.")
    parser.add_argument("--warmup", type=float, default=20.0, help="Seconds of load before the RSS baseline.")
    parser.add_argument("--max-rss-growth", type=float, default=0.10)
    parser.add_argument(
        "--artifacts", help="Comma-separated artifact dirs for versions 1, 2, 3 (default: train three)."
    )
    args = parser.parse_args()

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    artifacts = [Path(a) for a in args.artifacts.split(",")] if args.artifacts else train_artifacts(out)
    artifacts = (artifacts * 3)[:3]
    repo = out / "repo"
    if repo.exists():
        import shutil

        shutil.rmtree(repo)
    publish = [*RECSYS, "publish", "--repo", str(repo), "--model", "soak", "--artifact"]
    subprocess.run([*publish, str(artifacts[0])], check=True, stdout=subprocess.DEVNULL)

    fport, iport = free_port(), free_port()
    store = f"sqlite:///{out / 'features.sqlite'}"
    features = start_features(artifacts[0], store, fport, out / "features.log")
    wait_serving(f"127.0.0.1:{fport}", features)
    inference = subprocess.Popen(
        [
            *RECSYS,
            "serve",
            "inference",
            "--repo",
            str(repo),
            "--model",
            "soak",
            "--features",
            f"127.0.0.1:{fport}",
            "--host",
            "127.0.0.1",
            "--port",
            str(iport),
            "--watch-interval",
            "1",
        ],
        stdout=open(out / "inference.log", "w"),  # noqa: SIM115 (the server process owns it until the end)
        stderr=subprocess.STDOUT,
    )
    events: list[tuple[float, str]] = []
    try:
        wait_serving(f"127.0.0.1:{iport}", inference)
        load = Load(f"127.0.0.1:{iport}", histories(artifacts[0]), args.clients, args.deadline)
        load_avg_start = os.getloadavg()
        t0 = time.monotonic()
        threads = load.start()
        rss_samples: list[tuple[float, int]] = []
        plan = [(0.25, "publish 2"), (0.50, "kill features"), (None, "restart features"), (0.75, "publish 3")]
        restart_at = 0.50 * args.duration + args.outage
        baseline = None
        while (now := time.monotonic() - t0) < args.duration:
            rss = rss_bytes(inference.pid)
            rss_samples.append((now, rss))
            if baseline is None and now >= args.warmup:
                baseline = rss
            while plan and (
                plan[0][0] is None and now >= restart_at or plan[0][0] is not None and now >= plan[0][0] * args.duration
            ):
                _, what = plan.pop(0)
                events.append((round(now, 1), what))
                if what == "publish 2":
                    subprocess.run([*publish, str(artifacts[1])], check=True, stdout=subprocess.DEVNULL)
                elif what == "publish 3":
                    subprocess.run([*publish, str(artifacts[2])], check=True, stdout=subprocess.DEVNULL)
                elif what == "kill features":
                    features.send_signal(signal.SIGKILL)
                    features.wait()
                else:
                    features = start_features(artifacts[0], store, fport, out / "features.log")
            time.sleep(1.0)
        load.stop.set()
        for t in threads:
            t.join(timeout=args.deadline + 5)
        elapsed = time.monotonic() - t0
        rss_end = rss_bytes(inference.pid)
    finally:
        inference.send_signal(signal.SIGTERM)
        features.send_signal(signal.SIGTERM)
        inference.wait(timeout=30)
        features.wait(timeout=30)

    lat = np.array(load.latencies) * 1000.0
    failed = sum(n for code, n in load.codes.items() if code != "OK")
    baseline = baseline or rss_samples[0][1]
    growth = (rss_end - baseline) / baseline
    report = {
        "duration_s": round(elapsed, 1),
        "clients": args.clients,
        "requests": sum(load.codes.values()),
        "ok": load.codes["OK"],
        "failed": failed,
        "codes": dict(load.codes),
        "degraded": load.degraded,
        "throughput_rps": round(load.codes["OK"] / elapsed, 1),
        "latency_ms": {
            p: round(float(np.percentile(lat, q)), 2) for p, q in [("p50", 50), ("p95", 95), ("p99", 99), ("max", 100)]
        }
        if len(lat)
        else {},
        "versions": dict(load.versions),
        "sources": dict(load.sources),
        "events_s": events,
        "rss_mib": {
            "after_warmup": round(baseline / 2**20, 1),
            "end": round(rss_end / 2**20, 1),
            "max": round(max(r for _, r in rss_samples) / 2**20, 1),
        },
        "rss_growth_pct": round(100 * growth, 2),
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_start": [round(x, 2) for x in load_avg_start],
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        },
        "errors": load.errors,
    }
    (out / "soak.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    swapped = {"soak/2", "soak/3"} <= set(load.versions)
    return 0 if failed == 0 and swapped and growth < args.max_rss_growth else 1


if __name__ == "__main__":
    sys.exit(main())
