"""Soak test (loopback only, bounded in time): a day of operations under N concurrent clients,
with every request's outcome, every rollout's outcome and the servers' memory reported.

    python -m benchmarks.soak --duration 300 --clients 32 --out runs/soak

Before the clock (cached in OUT/days, retrained only when their data changes): growing
sequential data for days 1, 2 and 4 (users walk a ring of items that grows; each day adds
events, users and items), and a small SASRec trained on each; day 3 is a *bad model*: a SASRec
trained on day 2 with every item id mapped to another one (a random derangement), so it is
valid and sound but recommends the wrong items; its manifest asks its rollout for a top-10
overlap of at least `BAD_MIN_OVERLAP` with the stable version.

Then, each a separate process on 127.0.0.1: Redis (AOF, appendfsync always) as the store, the
feature service over it, the inference server over a model repository rolling each new
version out as a canary (`canary:0.05:PROMOTE`) with its Prometheus metrics on. Day 1 is
loaded and published before the clients start; N closed-loop clients then send Recommend
(k=10, exclude_seen, deadline `--deadline`) for random users of the latest loaded day, each
with the user's recent history, while (fractions of `--duration`):

    0.10  cycle 1: load day 2 into the store, publish it       (expected: promoted)
    0.35  cycle 2: publish the bad model                       (expected: rolled back)
    0.55  kill -9 the feature service, start it `--outage` s later
    0.70  restart Redis: SIGTERM, start it again on the same port and files
    0.80  cycle 3: load day 4 into the store, publish it       (expected: promoted)

The report (OUT/soak.json, printed, and as Markdown in OUT/soak.md) has the requests, the
failures by status code, degraded answers by source (from the answers and from the server's
metrics), p50/p99 per phase (between two events), the versions that answered, each cycle's
rollout outcome with its timings, and both services' RSS after warm-up and at the end. The
exit status is 0 only with no failed request, cycles 1 and 3 promoted, the bad model rolled
back, and every service's RSS growth under `--max-rss-growth`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import grpc
import numpy as np

from recsys.client import free_port, wait_serving
from recsys.v1 import admin_pb2, admin_pb2_grpc, inference_pb2, inference_pb2_grpc

RECSYS = [sys.executable, "-m", "recsys.cli"]
MODEL = "soak"
# Day -> (users, items): users walk a ring of that many items; each day adds events to every
# user's walk, new users and new items (day 3 is the bad model, trained on day 2's data).
DAYS = {1: (600, 300), 2: (700, 330), 4: (800, 360)}
BAD_MIN_OVERLAP = 0.1  # chance overlap of two unrelated top-10s over ~300 items is ~0.03
TRAIN = {"max_len": 20, "hidden": 32, "heads": 2, "layers": 1, "inner": 64, "batch_size": 128}
TRAIN.update({"eval_every": 2, "patience": 2})
EPOCHS = 6
METRICS = (
    "recsys_degraded_responses_total",
    "recsys_failures_total",
    "recsys_rollout_",
    "recsys_model_swaps_total",
    "process_resident_memory_bytes",
)


# -- data and artifacts (before the clock) --------------------------------------------------


def write_days(directory: Path, seed: int = 0) -> dict[int, Path]:
    """Cumulative `interactions.csv` for each day of `DAYS` (day 1 under directory/day1, ...):
    existing users walk on from where they stopped, new users start anywhere; 15 % of steps
    jump to a random item. Timestamps of day d lie in [d * 1e6, d * 1e6 + 1e5)."""
    rng = np.random.default_rng(seed)
    where: dict[int, int] = {}
    lines = ["user_id,item_id,timestamp"]
    paths = {}
    for day, (users, items) in DAYS.items():
        for u in range(users):
            item = where.get(u, int(rng.integers(items)))
            t = day * 1_000_000 + int(rng.integers(10_000))
            for _ in range(int(rng.integers(3, 10) if u in where else rng.integers(10, 40))):
                item = (item + 1) % items if rng.random() > 0.15 else int(rng.integers(items))
                t += int(rng.integers(1, 100))
                lines.append(f"u{u:04d},i{item:03d},{t}")
            where[u] = item
        paths[day] = directory / f"day{day}" / "interactions.csv"
        paths[day].parent.mkdir(parents=True, exist_ok=True)
        paths[day].write_text("\n".join(lines) + "\n")
    return paths


def write_permuted(source: Path, target: Path, seed: int = 0) -> dict[str, str]:
    """`source` with every item id mapped to another one (a derangement: a random cycle over
    the item ids), written to `target`; returns the mapping."""
    rows = [line.split(",") for line in source.read_text().splitlines()[1:]]
    items = sorted({row[1] for row in rows})
    order = [items[i] for i in np.random.default_rng(seed).permutation(len(items))]
    mapping = {a: b for a, b in zip(order, order[1:] + order[:1])}
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("user_id,item_id,timestamp\n" + "".join(f"{u},{mapping[i]},{t}\n" for u, i, t in rows))
    return mapping


def train(interactions: Path, artifact: Path, seed: int) -> Path:
    """A small SASRec on `interactions`, unless the artifact beside it was trained on the same
    bytes with the same settings (a stamp file records them)."""
    config = interactions.parent / "train.json"
    config.write_text(json.dumps(TRAIN))
    key = hashlib.sha256(interactions.read_bytes() + config.read_bytes() + f"{EPOCHS}/{seed}".encode()).hexdigest()
    stamp = artifact.with_name(artifact.name + ".trained-from")
    if (artifact / "manifest.json").exists() and stamp.exists() and stamp.read_text() == key:
        return artifact
    command = ["train", "--interactions", str(interactions), "--out", str(artifact), "--epochs", str(EPOCHS)]
    run_recsys(*command, "--seed", str(seed), "--config", str(config), "--quiet")
    stamp.write_text(key)
    return artifact


def prepare(out: Path) -> dict[int, Path]:
    """Day -> artifact for days 1-4 (3: the bad model, its manifest carrying its rollout limit)."""
    days = write_days(out / "days")
    write_permuted(days[2], out / "days" / "day3" / "interactions.csv")
    days[3] = out / "days" / "day3" / "interactions.csv"
    artifacts = {day: train(path, path.parent / "artifact", seed=day) for day, path in sorted(days.items())}
    manifest_path = artifacts[3] / "manifest.json"  # not among the checksummed files
    manifest = json.loads(manifest_path.read_text())
    manifest["training"]["rollout"] = {"min_overlap": BAD_MIN_OVERLAP}
    manifest_path.write_text(json.dumps(manifest, indent=2))
    return artifacts


def run_recsys(*args: str) -> str:
    done = subprocess.run([*RECSYS, *args], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"recsys {' '.join(args[:2])} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return done.stdout


def histories(artifact: Path, keep: int = 20) -> list[tuple[str, list[str]]]:
    rows = []
    with open(artifact / "histories.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            rows.append((row["user_id"], row["item_ids"][-keep:]))
    return rows


# -- processes ------------------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Rss:
    """One process's RSS, read from its metrics endpoint (`process_resident_memory_bytes`) or,
    without one, from /proc: its first sample `warmup_s` or more after this is made is the
    baseline; one sample every `every_s` seconds is kept as a series."""

    def __init__(self, pid: int, warmup_s: float, every_s: float = 10.0, metrics_port: int | None = None) -> None:
        self.pid, self.ready_at, self.every_s = pid, time.monotonic() + warmup_s, every_s
        self.metrics_port = metrics_port
        self.baseline = self.last = self.peak = 0
        self.series: list[tuple[float, float]] = []

    def read(self) -> int:
        if self.metrics_port is not None:
            try:
                return int(scrape(self.metrics_port)["process_resident_memory_bytes"])
            except (OSError, KeyError):
                pass  # the endpoint is not up (yet): /proc says the same
        return rss_bytes(self.pid)

    def sample(self, t: float) -> None:
        rss = self.read()
        if not self.baseline and time.monotonic() >= self.ready_at:
            self.baseline = rss
        self.last, self.peak = rss, max(self.peak, rss)
        if not self.series or t - self.series[-1][0] >= self.every_s:
            self.series.append((round(t, 1), round(rss / 2**20, 1)))

    def summary(self) -> dict:
        base = self.baseline or self.last
        return {
            "after_warmup_mib": round(base / 2**20, 1),
            "end_mib": round(self.last / 2**20, 1),
            "max_mib": round(self.peak / 2**20, 1),
            "growth_pct": round(100 * (self.last - base) / base, 2) if base else None,
            "series_s_mib": self.series,
        }


class Redis:
    """redis-server on `port` with its files (AOF, fsync on every write) in `directory`."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory, self.port, self.process = directory, port, None
        directory.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        command = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.directory)]
        command += ["--appendonly", "yes", "--appendfsync", "always", "--save", "", "--logfile", "redis.log"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if self.command("PING") == "PONG":
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer on port {self.port}: see {self.directory / 'redis.log'}")

    def command(self, *words: str) -> str:
        """One inline command's reply line (without its type byte)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
            conn.sendall((" ".join(words) + "\r\n").encode())
            return conn.recv(256).decode().split("\r\n")[0][1:]

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


def serve(out: Path, name: str, *args: str) -> subprocess.Popen:
    log = open(out / f"{name}.log", "a")  # noqa: SIM115 (the server process owns it until the end)
    return subprocess.Popen([*RECSYS, "serve", name, "--host", "127.0.0.1", *args], stdout=log, stderr=log)


def scrape(port: int) -> dict[str, float]:
    """The `METRICS` samples of a Prometheus text endpoint: "name{labels}" -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as f:
        text = f.read().decode()
    return parse_metrics(text)


def parse_metrics(text: str) -> dict[str, float]:
    samples = {}
    for line in text.splitlines():
        if line.startswith(METRICS):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


# -- load -----------------------------------------------------------------------------------


class Load:
    """N closed-loop clients; each records (seconds since t0, latency s, code, version, source,
    degraded) for every request."""

    def __init__(self, target: str, users: list[tuple[str, list[str]]], clients: int, deadline_s: float) -> None:
        self.target, self.users, self.deadline_s = target, users, deadline_s
        self.stop = threading.Event()
        self.records: list[list[tuple]] = [[] for _ in range(clients)]
        self.errors: Counter[str] = Counter()
        self.t0 = time.monotonic()
        self.threads = [threading.Thread(target=self.run_client, args=(i,), daemon=True) for i in range(clients)]

    def start(self) -> None:
        self.t0 = time.monotonic()
        for t in self.threads:
            t.start()

    def run_client(self, i: int) -> None:
        rng, records = random.Random(i), self.records[i]
        with grpc.insecure_channel(self.target) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            while not self.stop.is_set():
                user, history = rng.choice(self.users)  # the list is swapped whole when a day loads
                request = inference_pb2.RecommendRequest(user_id=user, k=10, exclude_seen=True, history=history)
                start = time.monotonic()
                try:
                    reply = stub.Recommend(request, timeout=self.deadline_s)
                    source = inference_pb2.Source.Name(reply.source)
                    outcome = ("OK", reply.model_version.split(":")[0], source, reply.degraded)
                except grpc.RpcError as exc:
                    outcome = (exc.code().name, "", "", False)
                    self.errors[f"{exc.code().name}: {exc.details()}"] += 1
                end = time.monotonic()
                records.append((end - self.t0, end - start, *outcome))

    def join(self) -> list[tuple]:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=self.deadline_s + 5)
        return sorted(r for records in self.records for r in records)


def latency_ms(latencies: list[float]) -> dict[str, float]:
    if not latencies:
        return {}
    lat = np.asarray(latencies) * 1000.0
    return {p: round(float(np.percentile(lat, q)), 1) for p, q in [("p50", 50), ("p99", 99), ("max", 100)]}


def phases(records: list[tuple], events: list[tuple[float, str]], end: float) -> list[dict]:
    """Requests, failures, degraded answers and latency between consecutive events."""
    bounds = [*events, (end, "")]
    out = []
    for (start, name), (stop, _) in zip(bounds, bounds[1:]):
        rows = [r for r in records if start <= r[0] < stop]
        ok = [r for r in rows if r[2] == "OK"]
        degraded = [r[0] for r in ok if r[5]]
        out.append(
            {
                "phase": name,
                "from_s": round(start, 1),
                "to_s": round(stop, 1),
                "requests": len(rows),
                "failed": len(rows) - len(ok),
                "degraded": len(degraded),
                "degraded_s": [round(degraded[0], 1), round(degraded[-1], 1)] if degraded else [],
                "latency_ms": latency_ms([r[1] for r in ok]),
                "versions": dict(Counter(r[3] for r in ok)),
            }
        )
    return out


# -- rollouts -------------------------------------------------------------------------------


class Cycles:
    """Published versions and what became of each: its rollout's outcome, or its rejection."""

    def __init__(self, target: str) -> None:
        self.admin = admin_pb2_grpc.AdminServiceStub(grpc.insecure_channel(target))
        self.cycles: dict[int, dict] = {}

    def published(self, version: int, name: str, expect: str, t: float, took_s: float) -> None:
        """`version` was published by a command started at `t` (seconds since t0) that took `took_s`."""
        self.cycles[version] = {"cycle": name, "version": version, "expected": expect, "state": "pending"}
        self.cycles[version].update(publish_at_s=round(t, 1), publish_took_s=round(took_s, 1))
        self.cycles[version]["published_unix"] = time.time() - took_s

    def poll(self) -> None:
        pending = [v for v, c in self.cycles.items() if c["state"] in ("pending", "running")]
        if not pending:
            return
        try:
            status = self.admin.GetModelStatus(admin_pb2.GetModelStatusRequest(), timeout=5)
        except grpc.RpcError:
            return
        rejected = {r.version: r.reason for r in status.rejected}
        rollout = status.rollout if status.HasField("rollout") else None
        for version in pending:
            cycle = self.cycles[version]
            if rollout is not None and rollout.version == version:
                cycle["state"] = rollout.state
                cycle["rollout"] = {
                    "reason": rollout.reason,
                    "started_s_after_publish": round(rollout.started_at - cycle["published_unix"], 1),
                    "candidate_answers": rollout.candidate.requests,
                    "candidate_p99_ms": round(rollout.candidate.p99_ms, 1),
                    "stable_p99_ms": round(rollout.stable.p99_ms, 1),
                    "compared": rollout.compared,
                    "overlap": round(rollout.overlap, 3),
                    "limits": {"min_overlap": rollout.limits.min_overlap, "max_p99_ms": rollout.limits.max_p99_ms},
                }
                if rollout.state != "running":
                    cycle["ended_s_after_publish"] = round(rollout.ended_at - cycle["published_unix"], 1)
                    cycle["ended_unix"] = rollout.ended_at
            elif version in rejected and cycle["state"] == "pending":  # failed its checks: never rolled out
                cycle.update(state="rejected", reason=rejected[version])

    def report(self, records: list[tuple], t0_unix: float) -> list[dict]:
        """Each cycle, with the time from its version's first answer to the rollout's end."""
        out = []
        for version, cycle in sorted(self.cycles.items()):
            cycle = dict(cycle)
            first = next((r[0] for r in records if r[3] == f"{MODEL}/{version}"), None)
            cycle["answers"] = sum(r[3] == f"{MODEL}/{version}" for r in records)
            if first is not None and "ended_unix" in cycle:
                cycle["ended_s_after_first_answer"] = round(cycle["ended_unix"] - (t0_unix + first), 1)
            cycle.pop("published_unix")
            cycle.pop("ended_unix", None)
            cycle["ok"] = cycle["state"] == cycle["expected"]
            out.append(cycle)
        return out


# -- the day --------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/soak")
    parser.add_argument("--duration", type=float, default=300.0, help="Seconds of load.")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--deadline", type=float, default=2.0, help="Per-request deadline, seconds.")
    parser.add_argument("--promote-after", type=float, default=20.0, help="Seconds a canary stays healthy.")
    parser.add_argument("--outage", type=float, default=5.0, help="Seconds the feature service stays down.")
    parser.add_argument("--redis-gap", type=float, default=2.0, help="Seconds Redis stays down.")
    parser.add_argument("--warmup", type=float, default=20.0, help="Seconds of load before the RSS baselines.")
    parser.add_argument("--max-rss-growth", type=float, default=0.10)
    args = parser.parse_args()

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    artifacts = prepare(out)
    print(f"artifacts ready in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    for stale in [out / "repo", out / "redis", *out.glob("*.log")]:
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink(missing_ok=True)
    repo = out / "repo"

    redis = Redis(out / "redis", free_port())
    store = f"redis://127.0.0.1:{redis.port}/0"
    fport, iport, mport, fmport = free_port(), free_port(), free_port(), free_port()
    redis.start()
    run_recsys("features", "load", "--artifact", str(artifacts[1]), "--store", store)
    features = serve(out, "features", "--store", store, "--port", str(fport), "--metrics-port", str(fmport))
    run_recsys("publish", "--artifact", str(artifacts[1]), "--repo", str(repo), "--model", MODEL)
    inference = serve(
        out, "inference", "--repo", str(repo), "--model", MODEL, "--features", f"127.0.0.1:{fport}",
        "--port", str(iport), "--watch-interval", "1", "--rollout", f"canary:0.05:{args.promote_after:g}",
        "--metrics-port", str(mport),
    )  # fmt: skip
    target = f"127.0.0.1:{iport}"
    events: list[tuple[float, str]] = [(0.0, "day 1 serving")]
    notes: dict[str, object] = {}
    try:
        wait_serving(f"127.0.0.1:{fport}", features)
        wait_serving(target, inference)
        load = Load(target, histories(artifacts[1]), args.clients, args.deadline)
        cycles = Cycles(target)
        loadavg_start = os.getloadavg()
        t0_unix = time.time()
        load.start()
        rss = {
            "inference": Rss(inference.pid, args.warmup, metrics_port=mport),
            "features": Rss(features.pid, args.warmup, metrics_port=fmport),
        }
        rss_done: list[tuple[str, dict]] = []

        def cycle(day: int | None, version_of: int, name: str, expect: str) -> None:
            if day is not None:  # the store first, so the new version finds what it reads
                run_recsys("features", "load", "--artifact", str(artifacts[day]), "--store", store)
                load.users = histories(artifacts[day])
            start = time.monotonic()
            published = json.loads(run_recsys("publish", "--artifact", str(artifacts[version_of]),
                                               "--repo", str(repo), "--model", MODEL))  # fmt: skip
            cycles.published(published["version"], name, expect, start - load.t0, time.monotonic() - start)

        def kill_features() -> None:
            rss["features"].sample(time.monotonic() - load.t0)
            rss_done.append(("features (until killed)", rss.pop("features").summary()))
            features.send_signal(signal.SIGKILL)
            features.wait()

        def restart_features() -> None:
            nonlocal features
            features = serve(out, "features", "--store", store, "--port", str(fport), "--metrics-port", str(fmport))
            rss["features (restarted)"] = Rss(features.pid, args.warmup, metrics_port=fmport)
            wait_serving(f"127.0.0.1:{fport}", features)
            notes["features_serving_again_s"] = round(time.monotonic() - load.t0, 1)

        def restart_redis() -> None:
            keys = redis.command("DBSIZE")
            notes["redis_exit_code"] = redis.stop()
            time.sleep(args.redis_gap)
            redis.start()
            events.append((time.monotonic() - load.t0, "Redis started again"))
            notes["redis_keys_before_after"] = [int(keys), int(redis.command("DBSIZE"))]

        d = args.duration
        plan = [
            (0.10 * d, "cycle 1: day 2 loaded and published", lambda: cycle(2, 2, "1: day 2", "promoted")),
            (0.35 * d, "cycle 2: bad model published", lambda: cycle(None, 3, "2: bad model", "rolled_back")),
            (0.55 * d, "feature service killed (SIGKILL)", kill_features),
            (0.55 * d + args.outage, "feature service restarted", restart_features),
            (0.70 * d, "Redis stopped (SIGTERM)", restart_redis),
            (0.80 * d, "cycle 3: day 4 loaded and published", lambda: cycle(4, 4, "3: day 4", "promoted")),
        ]
        while (now := time.monotonic() - load.t0) < d:
            for meter in rss.values():
                meter.sample(now)
            while plan and now >= plan[0][0]:
                _, name, action = plan.pop(0)
                events.append((round(now, 1), name))
                action()
                now = time.monotonic() - load.t0
            cycles.poll()
            time.sleep(0.5)
        for meter in rss.values():
            meter.sample(time.monotonic() - load.t0)
        records = load.join()
        elapsed = time.monotonic() - load.t0
        cycles.poll()
        metrics = scrape(mport)
        status = json.loads(run_recsys("model", "status", "--server", target))
    finally:
        for proc in (inference, features):
            proc.send_signal(signal.SIGTERM)
        codes = {"inference": inference.wait(timeout=60), "features": features.wait(timeout=60)}
        redis.stop()

    ok = [r for r in records if r[2] == "OK"]
    rss_report = dict(rss_done) | {name: meter.summary() for name, meter in rss.items()}
    growth = [m["growth_pct"] for m in rss_report.values() if m["growth_pct"] is not None]
    report = {
        "duration_s": round(elapsed, 1),
        "clients": args.clients,
        "requests": len(records),
        "ok": len(ok),
        "failed": len(records) - len(ok),
        "failed_by_code": dict(Counter(r[2] for r in records if r[2] != "OK")),
        "errors": dict(load.errors.most_common(20)),
        "throughput_rps": round(len(ok) / elapsed, 1),
        "latency_ms": latency_ms([r[1] for r in ok]),
        "degraded_by_source": dict(Counter(r[4] for r in ok if r[5])),
        "sources": dict(Counter(r[4] for r in ok)),
        "versions": dict(sorted(Counter(r[3] for r in ok).items())),
        "cycles": cycles.report(records, t0_unix),
        "phases": phases(records, events, elapsed),
        "events_s": [(round(t, 1), name) for t, name in events],
        "notes": notes,
        "server_metrics": metrics,
        "rejected": {r["version"]: r["reason"] for r in status.get("rejected", [])},
        "rss": rss_report,
        "exit_codes": codes,
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_start": [round(x, 2) for x in loadavg_start],
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        },
    }
    (out / "soak.json").write_text(json.dumps(report, indent=2))
    (out / "soak.md").write_text(markdown(report))
    print(json.dumps(report, indent=2))
    print(markdown(report))
    passed = report["failed"] == 0 and all(c["ok"] for c in report["cycles"]) and len(report["cycles"]) == 3
    return 0 if passed and all(g < 100 * args.max_rss_growth for g in growth) else 1


def markdown(report: dict) -> str:
    """The report's tables, as docs/results/soak.md shows them."""
    lines = ["| phase | from–to (s) | requests | failed | degraded (first–last, s) | p50 / p99 (ms) | versions |"]
    lines.append("|---" * 7 + "|")
    for p in report["phases"]:
        lat = p["latency_ms"]
        versions = ", ".join(f"{v.split('/')[-1]}: {n:,}" for v, n in sorted(p["versions"].items()))
        window = "–".join(f"{t:g}" for t in p["degraded_s"])
        degraded = f"{p['degraded']:,}" + (f" ({window} s)" if window else "")
        lines.append(
            f"| {p['phase']} | {p['from_s']:g}–{p['to_s']:g} | {p['requests']:,} | {p['failed']} | {degraded} "
            f"| {lat.get('p50', '-')} / {lat.get('p99', '-')} | {versions} |"
        )
    lines += ["", "| cycle | version | expected | outcome | reason | overlap | answers | ended, s after: publish / "
              "its first answer |", "|---" * 8 + "|"]  # fmt: skip
    for c in report["cycles"]:
        rollout = c.get("rollout", {})
        lines.append(
            f"| {c['cycle']} | {c['version']} | {c['expected']} | **{c['state']}** "
            f"| {rollout.get('reason') or c.get('reason', '')} | {rollout.get('overlap', '-')} | {c['answers']:,} "
            f"| {c.get('ended_s_after_publish', '-')} / {c.get('ended_s_after_first_answer', '-')} |"
        )
    lines += ["", "| process | RSS after warm-up (MiB) | end | max | growth |", "|---" * 5 + "|"]
    for name, m in report["rss"].items():
        lines.append(f"| {name} | {m['after_warmup_mib']} | {m['end_mib']} | {m['max_mib']} | {m['growth_pct']} % |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
